"""Flow solvers against diffusers, one scheduler instance per latent, driven in a FIFO-like pattern.

Oracles: ``FlowMatchEulerDiscreteScheduler`` and ``UniPCMultistepScheduler(use_flow_sigmas=True,
prediction_type="flow_prediction")`` (the diffusers port of Wan2.1's ``FlowUniPCMultistepScheduler``),
each stepped frame by frame from the latent's entry level to the end. Our solver steps every active
latent (each at its own level, entering at different times) in vectorised calls, and the two
trajectories must agree to fp32 round-off. The Wan grid is given to diffusers as custom sigmas (already
shifted, so the scheduler's own shift is 1); the ``diffusers_*`` grids come from diffusers'
``set_timesteps(T)`` itself.
"""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from miga_fast.solvers import (
    FLOW_SCHEDULES,
    DDIMSolver,
    FlowEulerSolver,
    FlowUniPCSolver,
    flow_schedule,
    make_solver,
)

SHIFT = 5.0
LATENT = (4, 5, 5)


def fake_velocity(x, level, ident):
    """Deterministic nonlinear stand-in for the denoiser: ``x [N, ...]``, ``level, ident [N]``."""
    lv = level.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    idf = ident.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(x) * (1 + 0.05 * lv) + 0.3 * torch.sin(3 * x + 0.1 * lv + idf)


def diffusers_scheduler(kind, schedule, T, shift=SHIFT):
    """A fresh diffusers scheduler on the same sigma grid as our solver."""
    if kind == "euler":
        if schedule == "diffusers_euler":
            sched = FlowMatchEulerDiscreteScheduler(shift=shift)
            sched.set_timesteps(T)
        else:
            sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
            sched.set_timesteps(sigmas=flow_schedule(T, shift, schedule)[0].astype(np.float64))
    else:
        common = dict(use_flow_sigmas=True, prediction_type="flow_prediction")
        if schedule == "diffusers_unipc":
            sched = UniPCMultistepScheduler(flow_shift=shift, **common)
            sched.set_timesteps(T)
        else:
            sched = UniPCMultistepScheduler(flow_shift=1.0, **common)
            sched.set_timesteps(sigmas=flow_schedule(T, shift, schedule)[0].astype(np.float64))
    return sched


def reference_trajectory(kind, schedule, T, x, entry_level, ident):
    """diffusers, one latent: the latents after each step from ``entry_level`` down to the output."""
    sched = diffusers_scheduler(kind, schedule, T)
    sched.set_begin_index(T - 1 - entry_level)
    traj = []
    for level in range(entry_level, -1, -1):
        v = fake_velocity(x, torch.tensor([level]), torch.tensor([ident]))
        x = sched.step(v, sched.timesteps[T - 1 - level], x).prev_sample
        traj.append(x)
    return traj


def fifo_run(solver, x_init, entries, ticks, capacity, gen):
    """Drive ``solver`` like a FIFO queue; returns {latent id: [latent after each of its steps]}.

    ``entries[j] = (tick, level)``: latent j (initial value ``x_init[j]``) enters the queue at that tick
    at that level and takes the next free slot of the ring (slots are recycled, so a new latent
    inherits the history of an exited one unless ``reset_slots`` clears it). At every tick all active
    latents step once, in random order, split into two vectorised calls (two model windows); a latent
    leaves after its level-0 step.
    """
    state = solver.init_state(capacity, x_init.shape[1:], "cpu", torch.float32)
    ptrs = {k: t.data_ptr() for k, t in state.items()}
    latents, levels, slot_of, traj = {}, {}, {}, {}
    ring = 0
    for tick in range(ticks):
        new = [j for j, (t, _) in enumerate(entries) if t == tick]
        for j in new:
            while ring in slot_of.values():
                ring = (ring + 1) % capacity
            slot_of[j] = ring
            latents[j], levels[j], traj[j] = x_init[j : j + 1], entries[j][1], []
        if new:
            solver.reset_slots(state, torch.tensor([slot_of[j] for j in new]))
        active = [list(latents)[k] for k in torch.randperm(len(latents), generator=gen).tolist()]
        cut = len(active) // 2
        for window in (active[:cut], active[cut:]):
            if not window:
                continue
            ids = torch.tensor(window)
            lv = torch.tensor([levels[j] for j in window])
            x = torch.cat([latents[j] for j in window])
            slots = torch.tensor([slot_of[j] for j in window])
            out = solver.step(x, fake_velocity(x, lv, ids), lv, slots=slots, state=state)
            for k, j in enumerate(window):
                latents[j] = out[k : k + 1]
                traj[j].append(latents[j])
                levels[j] -= 1
        for j in [j for j in latents if levels[j] < 0]:
            del latents[j], levels[j], slot_of[j]
    assert {k: t.data_ptr() for k, t in state.items()} == ptrs  # state is never reallocated
    return traj


@pytest.mark.parametrize(
    "kind, schedule",
    [("euler", "wan"), ("euler", "diffusers_euler"), ("unipc", "wan"), ("unipc", "diffusers_unipc")],
)
def test_fifo_trajectories_match_diffusers(kind, schedule):
    T = 8
    solver = (FlowEulerSolver if kind == "euler" else FlowUniPCSolver)(T, shift=SHIFT, schedule=schedule)
    # FIFO start: latents 0..T-1 fill the queue at levels 0..T-1 (mid-schedule entries with empty
    # history), then one new latent enters at the top level per tick; one latent re-enters at level 3.
    entries = [(0, j) for j in range(T)] + [(t, T - 1) for t in range(1, T + 2)] + [(4, 3)]
    x_init = 2 * torch.randn(len(entries), *LATENT)
    gen = torch.Generator().manual_seed(1)
    traj = fifo_run(solver, x_init, entries, ticks=2 * T + 2, capacity=T + 1, gen=gen)

    assert len(traj) == len(entries)
    max_err = 0.0
    for j, (_, level) in enumerate(entries):
        ref = reference_trajectory(kind, schedule, T, x_init[j : j + 1], level, j)
        assert len(traj[j]) == len(ref) == level + 1
        for ours, theirs in zip(traj[j], ref, strict=True):
            max_err = max(max_err, (ours - theirs).abs().max().item())
    # Euler is the same float32 op sequence as diffusers (bitwise equal); UniPC folds its coefficients
    # into float64-built tables (measured ~3e-6 here; a wrong order or a missed reset gives >1e-3).
    assert max_err <= (0.0 if kind == "euler" else 2e-5), max_err


@pytest.mark.parametrize("schedule", FLOW_SCHEDULES)
@pytest.mark.parametrize("T, shift", [(8, SHIFT), (54, SHIFT), (20, 3.3)])
def test_schedules_match_references(schedule, T, shift):
    sigmas, timesteps = flow_schedule(T, shift, schedule)
    if schedule == "wan":
        # Wan2.1 FlowUniPCMultistepScheduler(shift=1) __init__ + set_timesteps(T, shift=SHIFT), inlined.
        train = torch.from_numpy(1.0 - np.linspace(1, 1 / 1000, 1000)[::-1].copy()).to(torch.float32)
        ref = np.linspace(train[0].item(), train[-1].item(), T + 1).copy()[:-1]
        ref = shift * ref / (1 + (shift - 1) * ref)
        ref_t = torch.from_numpy(ref * 1000).to(torch.int64)
        ref_sigmas, ref_timesteps = torch.from_numpy(ref.astype(np.float32)), ref_t
    else:
        kind = "euler" if schedule == "diffusers_euler" else "unipc"
        sched = diffusers_scheduler(kind, schedule, T, shift)
        ref_sigmas, ref_timesteps = sched.sigmas[:-1], sched.timesteps
        assert sched.sigmas[-1] == 0
    np.testing.assert_array_equal(sigmas, ref_sigmas.numpy())
    np.testing.assert_array_equal(timesteps, ref_timesteps.double().numpy())

    # Level mapping: level T-1 = first sigma, level 0 = last nonzero one, its step lands on 0.
    solver = FlowEulerSolver(T, shift=shift, schedule=schedule)
    assert solver.sigmas[T - 1] == float(sigmas[0]) and solver.sigmas[0] == float(sigmas[-1])
    assert solver.sigmas_next[0] == 0
    torch.testing.assert_close(solver.sigmas_next[1:], solver.sigmas[:-1], rtol=0, atol=0)
    expected_t = ref_timesteps.flip(0).to(torch.float32)
    torch.testing.assert_close(solver.model_timesteps(torch.arange(T)), expected_t, rtol=0, atol=0)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="schedule"):
        FlowEulerSolver(8, schedule="karras")


@pytest.mark.parametrize("cls", [FlowEulerSolver, FlowUniPCSolver])
def test_add_noise_matches_diffusers(cls):
    T = 10
    solver = cls(T, shift=SHIFT, schedule="diffusers_unipc")
    sched = diffusers_scheduler("unipc", "diffusers_unipc", T)
    levels = torch.tensor([0, 9, 4, 4, 7])
    x, noise = torch.randn(5, *LATENT), torch.randn(5, *LATENT)
    ref = sched.add_noise(x, noise, sched.timesteps[T - 1 - levels])
    torch.testing.assert_close(solver.add_noise(x, noise, levels), ref, rtol=0, atol=1e-6)


def test_unipc_reset_slots():
    T = 8
    solver = FlowUniPCSolver(T)
    state = solver.init_state(4, LATENT, "cpu", torch.float32)
    x = torch.randn(2, *LATENT)
    slots, levels = torch.tensor([1, 3]), torch.tensor([7, 7])
    for _ in range(3):
        x = solver.step(x, fake_velocity(x, levels, slots), levels, slots=slots, state=state)
        levels = levels - 1
    assert state["count"].tolist() == [0, 2, 0, 2]
    untouched = {k: v[3].clone() for k, v in state.items()}

    solver.reset_slots(state, torch.tensor([1]))
    assert state["count"].tolist() == [0, 0, 0, 2]
    assert state["history"][1].abs().max() == 0
    for k, v in state.items():
        torch.testing.assert_close(v[3], untouched[k], rtol=0, atol=0)

    # A reset slot behaves like a fresh state: order-1 predictor, no corrector.
    fresh = solver.init_state(4, LATENT, "cpu", torch.float32)
    lv, v = levels[:1], fake_velocity(x[:1], levels[:1], slots[:1])
    a = solver.step(x[:1], v, lv, slots=slots[:1], state=state)
    b = solver.step(x[:1], v, lv, slots=slots[:1], state=fresh)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [FlowEulerSolver, FlowUniPCSolver])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_in_low_precision_out_computed_in_fp32(cls, dtype):
    T = 8
    solver = cls(T)
    levels, slots = torch.tensor([7, 5, 2]), torch.tensor([0, 1, 2])
    lp_state = solver.init_state(3, LATENT, "cpu", torch.float32)
    fp_state = solver.init_state(3, LATENT, "cpu", torch.float32)
    x = torch.randn(3, *LATENT).to(dtype)
    for _ in range(3):  # several steps so UniPC's corrector and order-2 predictor are exercised
        v = fake_velocity(x.float(), levels, slots).to(dtype)
        out = solver.step(x, v, levels, slots=slots, state=lp_state)
        expected = solver.step(x.float(), v.float(), levels, slots=slots, state=fp_state)
        assert out.dtype == dtype
        torch.testing.assert_close(out, expected.to(dtype), rtol=0, atol=0)
        x, levels = out, levels - 1
    for k in lp_state:
        torch.testing.assert_close(lp_state[k], fp_state[k], rtol=0, atol=0)
    assert solver.add_noise(x, x, levels).dtype == dtype


def test_unipc_requires_state():
    solver = FlowUniPCSolver(8)
    x = torch.randn(1, *LATENT)
    with pytest.raises(ValueError, match="state"):
        solver.step(x, x, torch.tensor([3]))


def test_interface_attributes():
    for cls in (FlowEulerSolver, FlowUniPCSolver):
        solver = cls(8)
        assert solver.prediction == "flow" and solver.num_steps == 8
    assert FlowEulerSolver(8).init_state(4, LATENT, "cpu", torch.float32) == {}
    with pytest.raises(ValueError, match="num_steps=8"):
        FlowUniPCSolver(8).check_levels(torch.tensor([8]))


@pytest.mark.parametrize("name", ["ddim", "flow_euler", "flow_unipc"])
def test_tables_live_on_the_device(name):
    solver = make_solver(name, 8, device="meta")
    tables = [v for v in vars(solver).values() if isinstance(v, torch.Tensor)]
    assert tables and all(t.device.type == "meta" for t in tables)
    moved = make_solver(name, 8).to("meta")
    assert all(t.device.type == "meta" for t in vars(moved).values() if isinstance(t, torch.Tensor))


def test_make_solver():
    assert isinstance(make_solver("ddim", 16, eta=0.0), DDIMSolver)
    assert isinstance(make_solver("flow_euler", 16, shift=3.0), FlowEulerSolver)
    assert isinstance(make_solver("flow_unipc", 16), FlowUniPCSolver)
    allowed = "'ddim', 'flow_euler', 'flow_unipc'"
    with pytest.raises(ValueError, match=rf"name must be one of {allowed} \(got 'dpm'\)"):
        make_solver("dpm", 16)


@pytest.mark.parametrize("cls", [FlowEulerSolver, FlowUniPCSolver])
def test_torch_compile_fullgraph_matches_eager(cls):
    T = 6
    solver = cls(T)
    compiled = torch.compile(solver.step, fullgraph=True)
    eager_state = solver.init_state(5, (2, 3, 3), "cpu", torch.float32)
    comp_state = solver.init_state(5, (2, 3, 3), "cpu", torch.float32)
    slots, levels = torch.tensor([4, 0, 2, 1]), torch.tensor([5, 4, 2, 3])
    x_e = x_c = torch.randn(4, 2, 3, 3)
    for _ in range(3):  # fixed shapes: one compilation serves every step
        x_e = solver.step(x_e, fake_velocity(x_e, levels, slots), levels, slots=slots, state=eager_state)
        x_c = compiled(x_c, fake_velocity(x_c, levels, slots), levels, slots=slots, state=comp_state)
        torch.testing.assert_close(x_c, x_e, rtol=1e-5, atol=1e-5)
        levels = levels - 1
    for k in eager_state:
        torch.testing.assert_close(comp_state[k], eager_state[k], rtol=1e-5, atol=1e-5)
