"""bench/baseline_loop.py (the official-style eager loop) == the Engine, driven by the same planner events.

Tolerance: fp32, max |engine - baseline| < 1e-3 on pixel-space latents in about [-1, 1] (an eighth of one uint8
level, 2/255). The two differ only in round-off: the engine batches cond/uncond and the windows of a group into
one call (other matmul blockings) and steps with float32 coefficient tables, the baseline calls the model once per
window and branch and computes its solver coefficients per frame in float64 Python; measured ~1e-4 over 16 steps.
"""

import pytest
import torch

import miga_fast
from bench.baseline_loop import for_engine
from miga_fast.runtime import Engine
from miga_fast.solvers import make_solver

PROMPT = "a red circle moving left on a striped blue background"


@pytest.fixture(scope="module")
def gen():
    return miga_fast.load_default()


def run_both(gen, mode, n, guidance=4.0, window_batch=0):
    cfg = gen.config(mode, steps=8 if mode == "fifo" else 10)  # fewer steps than the presets' 16: test time
    cond, uncond = gen.encode(PROMPT), gen.encode("")
    solver = make_solver(cfg.solver, cfg.num_steps, shift=gen.model.spec.shift)
    engine = Engine(gen.model.denoise, solver, cfg, (3, 32, 32), cond=cond, uncond=uncond, guidance_scale=guidance,
                    seed=7, window_batch=window_batch)
    with torch.no_grad():
        base = engine.sample_base()
        base_windows = engine.stats.windows
        ours = torch.stack(list(engine.run(n, base=base)))
        loop = for_engine(engine, gen.model.denoise, base, cond=cond, uncond=uncond)
        ref = torch.stack(list(loop.run_plan(cfg, n)))
    return ours, ref, engine.stats.windows - base_windows, loop


@pytest.mark.parametrize("mode,n,guidance", [("fifo", 3, 4.0), ("miga", 8, 1.0), ("miga-stream", 5, 4.0)])
def test_baseline_equals_engine_on_bundled_model(gen, mode, n, guidance):
    ours, ref, windows, loop = run_both(gen, mode, n, guidance)
    assert ours.shape == ref.shape == (n, 3, 32, 32)
    err = (ours - ref).abs().max().item()
    assert err < 1e-3, f"max |engine - baseline| = {err}"
    # same work: every engine window is one baseline window (x2 model calls with CFG)
    assert loop.windows == windows
    assert loop.model_calls == windows * (2 if guidance != 1.0 else 1)

