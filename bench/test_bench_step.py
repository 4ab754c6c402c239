"""pytest-benchmark suite of the engine step: one steady-state batched model call (`StaticStepper.execute`: host
layout, gathers, keyed noise, denoiser with CFG, solver step, ring write) in engine modes eager and compile,
next to the bare denoiser on the same input shape (the floor).

    pytest bench/ --benchmark-only
    pytest bench/test_bench_step.py --benchmark-only -k "tiny and eager"

Each case runs a short plan first (compiling every step kind in compile mode) and keeps the batch of the most
frequent step kind, so the benchmark re-executes a real call of the
plan on a live ring. Not part of the test suite (pyproject's testpaths is tests/).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from miga_fast.plan import preset  # noqa: E402
from miga_fast.runtime import Engine  # noqa: E402
from miga_fast.solvers import solver_for  # noqa: E402

SMALL_MIGA = dict(num_steps=24, window=8, zigzag=2, guidance_frames=2, stride=4, end_level=3, refine_level=3)
PROMPT = "a red circle moving left on a striped blue background"


def toy():
    from miga_fast.models.toy import ToyDenoiser

    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g) * 0.1
    return ToyDenoiser(channels=4, cond_dim=8).eval(), (4, 16, 16), cond, uncond, 5.0


def bundled():
    import miga_fast

    gen = miga_fast.load_default()
    return gen.model.denoise, (3, 32, 32), gen.encode(PROMPT), gen.encode(""), gen.model.spec.shift


# name -> (model factory, preset, overrides, output latents of the priming run)
CASES = {
    "toy-fifo": (toy, "vc2-fifo", dict(num_steps=16, window=8), 12),
    "toy-miga-stream": (toy, "vc2-miga-stream", SMALL_MIGA, 24),
    "tiny-fifo": (bundled, "tiny-fifo", {}, 4),
    "tiny-miga-stream": (bundled, "tiny-miga-stream", {}, 12),
}


@pytest.fixture(scope="module", params=[(c, m) for c in CASES for m in ("eager", "compile")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def primed(request):
    """(engine, calls, denoiser, cond, (B, F), case name) after a priming run."""
    name, mode = request.param
    factory, preset_name, overrides, n = CASES[name]
    denoise, shape, cond, uncond, shift = factory()
    cfg = preset(preset_name, **overrides)
    engine = Engine(denoise, solver_for(cfg, shift), cfg, shape, cond=cond, uncond=uncond, guidance_scale=4.0,
                    seed=0, mode=mode)
    seen: Counter = Counter()
    kept: dict = {}
    execute = engine.stepper.execute

    def spy(calls, latents, state, cond, held):
        out = execute(calls, latents, state, cond, held)
        key = engine.stepper.last_key
        seen[key] += 1
        if not held:
            kept[key] = list(calls)
        return out

    engine.stepper.execute = spy
    with torch.no_grad():
        for _ in engine.run(n):
            pass
    engine.stepper.execute = execute
    key = max(kept, key=lambda k: seen[k])
    return engine, kept[key], denoise, cond, (key.batch, key.frames), name


def test_step(benchmark, primed):
    engine, calls, _, _, key, name = primed

    def step():  # the stepper re-runs a real call on the live ring (writes land in slots the plan owns)
        with torch.no_grad():
            engine.stepper.execute(calls, engine.ring.latents, engine.ring.state, engine.conditions(len(calls)),
                                   False)

    benchmark.group = f"{name} step B{key[0]}xF{key[1]}"
    benchmark.extra_info.update(mode=engine.mode, batch=key[0], frames=key[1], phase=calls[0].phase)
    step()
    benchmark(step)


def test_denoiser_floor(benchmark, primed):
    """The bare denoiser on the step's input (CFG: 2B windows), eager: what the step costs at least."""
    engine, calls, denoise, cond, key, name = primed
    if engine.mode != "eager":
        pytest.skip("the floor is measured once per case (eager)")
    B, F = key[0], key[1]
    rows = 2 * B  # guidance 4: cond + uncond stacked
    x = torch.randn(rows, engine.latent_shape[0], F, *engine.latent_shape[1:])
    t = torch.full((rows, F), 500.0)
    c = cond.expand(rows, *cond.shape[1:]).contiguous()
    benchmark.group = f"{name} step B{B}xF{F}"
    benchmark.extra_info.update(mode="denoiser only", batch=B, frames=F)

    def run():
        with torch.no_grad():
            denoise(x, t, c)

    run()
    benchmark(run)
