"""Engine.snapshot / run(resume=...): a run stopped at any emitted latent and resumed in a fresh engine (replay of
the pure plan + the saved ring) yields exactly the latents the uninterrupted run yields after that point."""

import pytest
import torch

from miga_fast.errors import EngineError, NonFiniteError
from miga_fast.plan import preset
from miga_fast.runtime import Engine
from miga_fast.solvers import solver_for

SHAPE = (4, 6, 6)
CASES = [  # (preset, overrides): DDIM and the flow UniPC solver (per-slot history), reflection on and off
    ("vc2-fifo", dict(num_steps=8, window=4)),
    ("vc2-miga", dict(num_steps=24, window=8, zigzag=2, guidance_frames=2, stride=4, end_level=3, refine_level=3,
                      reflection=True, judged_level=15, reflect_blocks=2, candidates=2, reflect_threshold=-1.0)),
    ("vc2-miga-stream", dict(num_steps=8, window=4, zigzag=2, guidance_frames=2, stride=2, end_level=4,
                             refine_level=2)),
    ("tiny-miga-stream", dict()),
]


def conds():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g) * 0.1


def engine_for(toy, cfg, seed=3):
    cond, uncond = conds()
    return Engine(toy, solver_for(cfg), cfg, SHAPE, cond=cond, uncond=uncond, guidance_scale=3.0, seed=seed)


@pytest.mark.parametrize("name,overrides", CASES, ids=[c[0] for c in CASES])
def test_resume_at_every_latent_equals_the_uninterrupted_run(toy, name, overrides):
    cfg = preset(name, **overrides)
    n = 10
    with torch.no_grad():
        full = list(engine_for(toy, cfg).run(n))
        for stop in (1, 4, n - 1):
            first = engine_for(toy, cfg)
            run = first.run(n)
            for _ in range(stop):
                next(run)
            state = first.snapshot()
            run.close()
            rest = list(engine_for(toy, cfg).run(n, resume=state))
            assert len(rest) == n - stop
            for a, b in zip(full[stop:], rest, strict=True):
                assert torch.equal(a, b)


def test_resume_rejects_a_snapshot_of_another_run(toy):
    cfg = preset("vc2-fifo", num_steps=8, window=4)
    with torch.no_grad():
        run = engine_for(toy, cfg).run(6)
        engine = engine_for(toy, cfg)
        run = engine.run(6)
        next(run)
        state = engine.snapshot()
        with pytest.raises(EngineError, match="seed 3"):
            list(engine_for(toy, cfg, seed=4).run(6, resume=state))
        with pytest.raises(EngineError, match="6 latents"):
            list(engine_for(toy, cfg).run(7, resume=state))


def test_snapshot_size_is_fixed_by_the_ring(toy):
    cfg = preset("vc2-miga-stream", num_steps=8, window=4, zigzag=2, guidance_frames=2, stride=2, end_level=4,
                 refine_level=2)
    sizes = []
    with torch.no_grad():
        for n in (12, 60):
            engine = engine_for(toy, cfg)
            run = engine.run(n)
            for _ in range(n - 1):
                next(run)
            sizes.append(engine.snapshot().latents.shape)
    assert sizes[0] == sizes[1]


class NaNAt:
    """The toy denoiser with NaN in its output from call `k` (counted from 1) on."""

    def __init__(self, model, k):
        self.model, self.k, self.calls = model, k, 0

    def __call__(self, x, t, c):
        self.calls += 1
        out = self.model(x, t, c)
        return out * float("nan") if self.calls >= self.k else out


def test_non_finite_output_names_the_call_and_emits_nothing_after(toy):
    cfg = preset("vc2-fifo", num_steps=8, window=4)
    cond, uncond = conds()
    engine = Engine(NaNAt(toy, 20), solver_for(cfg), cfg, SHAPE, cond=cond, uncond=uncond, guidance_scale=3.0)
    got = []
    with torch.no_grad(), pytest.raises(NonFiniteError) as err:
        for latent in engine.run(30):
            assert torch.isfinite(latent).all()
            got.append(latent)
    # 8 base-clip calls come first: the 20th call overall is the 12th call of the plan (the base clip counts too)
    assert "model call 20 of this run" in str(err.value) and "phase fifo" in str(err.value)
    assert "serials" in str(err.value) and "levels" in str(err.value)
