"""The engine's emitted latents equal the eager official-style loop (bench/baseline_loop.py) given identical noise,
the loop driven by the independent re-derivation of the official schedules (tests/plan/official_reference.py)."""

import pytest
import torch

from bench.baseline_loop import BaselineLoop
from miga_fast.models.toy import ToyDenoiser
from miga_fast.plan import preset
from miga_fast.runtime import Engine
from miga_fast.solvers import DDIMSolver

from ..plan.official_reference import fifo_trace, miga_vc2_trace

SHAPE = (4, 6, 6)


@pytest.fixture(scope="module")
def model():
    return ToyDenoiser(channels=4, cond_dim=8).eval()


def conds():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g) * 0.1


def run_both(model, cfg, n, reference, scale=7.5, **ref_kw):
    cond, uncond = conds()
    engine = Engine(model, DDIMSolver(cfg.num_steps), cfg, SHAPE, cond=cond, uncond=uncond,
                    guidance_scale=scale, seed=3)
    with torch.no_grad():
        base = engine.sample_base()
        ours = torch.stack(list(engine.run(n, base=base)))
        ex = BaselineLoop(model, base, cfg.num_steps, cond=cond, uncond=uncond, guidance_scale=scale, solver="ddim",
                          seed=3, threshold=cfg.reflect_threshold)
        reference(ex, **ref_kw)
    ref = torch.stack(ex.outputs)
    return ours, ref, engine, ex


def assert_close(ours, ref):
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err < 2e-4 * max(1.0, ref.abs().max().item()), f"max abs error {err}"


@pytest.mark.parametrize("name", ["vc2-fifo", "vc2-fifo-nolookahead"])
def test_fifo_engine_equals_eager_loop(model, name):
    cfg = preset(name, num_steps=16, window=8)
    ours, ref, engine, _ = run_both(model, cfg, 12, lambda ex: fifo_trace(16, 8, cfg.lookahead, 12, ex=ex))
    assert_close(ours, ref)
    assert engine.stats.model_calls < engine.stats.windows  # windows of an iteration were batched


SMALL_MIGA = dict(num_steps=24, window=8, zigzag=2, guidance_frames=2, stride=4, end_level=3, refine_level=3)


def test_miga_engine_equals_eager_loop(model):
    cfg = preset("vc2-miga", **SMALL_MIGA)
    ours, ref, _, _ = run_both(model, cfg, 20, lambda ex: miga_vc2_trace(
        20, T=24, L=2, m=2, f0=8, S=4, end=3, refine=3, ex=ex))
    assert_close(ours, ref)


def test_miga_engine_equals_eager_loop_with_reflection(model):
    # threshold -1: every check after the first fires, so rollouts and selections are exercised.
    cfg = preset("vc2-miga", **SMALL_MIGA, reflection=True, judged_level=15, reflect_blocks=2,
                 candidates=2, reflect_threshold=-1.0)
    ours, ref, engine, ex = run_both(model, cfg, 40, lambda ex: miga_vc2_trace(
        40, T=24, L=2, m=2, f0=8, S=4, end=3, refine=3, reflection=True, judged_step=15, r=2, K=2, ex=ex))
    assert engine.stats.reflection_triggers > 0
    assert engine.stats.reflection_checks == len(ex.sim_result)
    assert_close(ours, ref)


def test_same_seed_same_video_bit_for_bit(model):
    cfg = preset("vc2-miga-stream", **SMALL_MIGA)
    cond, _ = conds()
    runs = []
    for _ in range(2):
        engine = Engine(model, DDIMSolver(24), cfg, SHAPE, cond=cond, seed=11)
        with torch.no_grad():
            runs.append(torch.stack(list(engine.run(10))))
    assert torch.equal(runs[0], runs[1])
    engine = Engine(model, DDIMSolver(24), cfg, SHAPE, cond=cond, seed=12)
    with torch.no_grad():
        other = torch.stack(list(engine.run(10)))
    assert not torch.equal(runs[0], other)


def test_window_batch_does_not_change_fifo_output(model):
    cfg = preset("vc2-fifo", num_steps=16, window=8)
    cond, _ = conds()
    outs = []
    for wb in (0, 1, 3):
        engine = Engine(model, DDIMSolver(16), cfg, SHAPE, cond=cond, seed=5, window_batch=wb)
        with torch.no_grad():
            outs.append(torch.stack(list(engine.run(6))))
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[0], outs[2], atol=1e-5)
