"""bench/baseline_loop.py driven by planner events on the toy model: reflection, both families, every solver; and
its per-latent UniPC against the vectorised FlowUniPCSolver."""

import numpy as np
import pytest
import torch

from bench.baseline_loop import BaselineLoop, for_engine
from miga_fast.models.toy import ToyDenoiser
from miga_fast.plan import preset
from miga_fast.runtime import Engine
from miga_fast.solvers import FlowUniPCSolver, make_solver


def test_per_frame_unipc_matches_vectorised_solver():
    """The baseline's per-latent UniPC (coefficients from the diffusers formulas per step) == FlowUniPCSolver's
    table-driven step, for latents that enter at different levels and walk down to sigma 0."""
    T = 12
    solver = FlowUniPCSolver(T, shift=3.0)
    base = torch.zeros(1, 2, 3, 3)
    loop = BaselineLoop(lambda *a: None, base, T, cond=torch.zeros(1, 1, 1), solver="flow_unipc", shift=3.0)
    g = torch.Generator().manual_seed(0)
    starts = [T - 1, 7, 3]
    x = torch.randn(len(starts), 2, 3, 3, generator=g, dtype=torch.float64)
    xs = x.clone()
    state = solver.init_state(len(starts), (2, 3, 3), "cpu", torch.float64)
    levels = list(starts)
    for _ in range(max(starts) + 1):
        live = [i for i, lv in enumerate(levels) if lv >= 0]
        v = torch.randn(len(starts), 2, 3, 3, generator=g, dtype=torch.float64)
        idx = torch.tensor(live)
        lv = torch.tensor([levels[i] for i in live])
        xs[idx] = solver.step(xs[idx], v[idx], lv, slots=idx, state=state)
        for i in live:
            loop.cdt = torch.float64
            x[i] = loop._unipc(i, x[i], v[i], levels[i])
            levels[i] -= 1
    np.testing.assert_allclose(x.numpy(), xs.numpy(), rtol=1e-5, atol=1e-6)


SMALL = {
    "vc2": dict(num_steps=24, window=8, zigzag=2, guidance_frames=2, stride=4, end_level=3, refine_level=3,
                judged_level=15, reflect_blocks=2, candidates=2),
    "wan": dict(num_steps=20, window=6, zigzag=3, guidance_frames=1, stride=4, end_level=4, refine_level=3,
                judged_level=14, reflect_blocks=1, candidates=2),
}


N = 30


@pytest.mark.parametrize("name,solver", [("vc2-miga", "ddim"), ("vc2-miga-stream", "flow_unipc"),
                                         ("wan-miga", "flow_unipc"), ("wan-miga-stream", "flow_euler")])
def test_baseline_equals_engine_with_reflection(name, solver):
    """Toy model, every reflection check after the first fires (threshold -1): rollouts, selections, re-noise,
    history resets (wan) all go through run_plan's event handling."""
    model = ToyDenoiser(channels=4, cond_dim=8).eval()
    cfg = preset(name, **SMALL[name.split("-")[0]], solver=solver, reflection=True, reflect_threshold=-1.0)
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g) * 0.1
    engine = Engine(model, make_solver(solver, cfg.num_steps), cfg, (4, 6, 6), cond=cond, uncond=uncond,
                    guidance_scale=3.0, seed=2)
    with torch.no_grad():
        base = engine.sample_base()
        ours = torch.stack(list(engine.run(N, base=base)))
        loop = for_engine(engine, model, base, cond=cond, uncond=uncond)
        ref = torch.stack(list(loop.run_plan(cfg, N)))
    assert engine.stats.reflection_triggers > 0 and engine.stats.reflection_checks == len(loop.sim_result)
    assert (ours - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
