"""Engine modes and the CUDA-graph runner's bookkeeping (a CPU fake backend stands in for the capture)."""

import pytest
import torch

from miga_fast import ConfigError
from miga_fast.models.toy import ToyDenoiser
from miga_fast.plan import ModelCall, preset
from miga_fast.runtime import Engine
from miga_fast.runtime.graph import GraphRunner, GraphUnavailable, StaticInputs, unavailable_reason
from miga_fast.runtime.modes import select_mode
from miga_fast.runtime.step import StepInputs, StepKey, host_step
from miga_fast.solvers import make_solver

SHAPE = (4, 6, 6)
SMALL_MIGA = dict(num_steps=24, window=8, zigzag=2, guidance_frames=2, stride=4, end_level=3, refine_level=3)


class FakeBackend:
    """'Captures' by running the step once (its writes go to the dump slot) and 'replays' by running it again."""

    def __init__(self, grown: int = 0):
        self.grown, self.warmups = grown, 0

    def warmup(self, fn, iters):
        self.warmups += iters
        for _ in range(iters):
            fn()

    def capture(self, fn):
        out = fn()
        return (lambda: out.copy_(fn())), out, self.grown


def engine(toy, name, mode, **overrides):
    cfg = preset(name, **overrides)
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g)
    return Engine(toy, make_solver(cfg.solver, cfg.num_steps), cfg, SHAPE, cond=cond, uncond=uncond,
                  guidance_scale=3.0, seed=3, mode=mode)


def with_fake_graphs(e, grown=0, **kw):
    """Swap a compile-mode engine's runner for a GraphRunner on the fake backend."""
    e.stepper.runner = GraphRunner(e.spec, e.device, backend=FakeBackend(grown), **kw)
    return e.runner


def run(e, n):
    with torch.no_grad():
        return torch.stack(list(e.run(n)))


def test_graph_mode_on_cpu_is_a_clear_error(toy):
    with pytest.raises(GraphUnavailable, match="CUDA graphs .* need a CUDA device .* 'cpu'"):
        engine(toy, "vc2-fifo", "graph", num_steps=16, window=8)
    with pytest.raises(ConfigError, match="mode must be one of"):
        engine(toy, "vc2-fifo", "fast", num_steps=16, window=8)


def test_engine_reports_its_mode_and_why_not_the_others(toy):
    e = engine(toy, "vc2-fifo", "auto", num_steps=16, window=8)
    assert e.mode == "eager" and "CUDA" in e.mode_why["graph"] and "compile" in e.mode_why
    e = engine(toy, "vc2-fifo", "compile", num_steps=16, window=8)
    assert e.mode == "compile" and e.mode_why["eager"] == "not requested" and "CUDA" in e.mode_why["graph"]
    assert select_mode("eager", torch.device("cpu"))[0] == "eager"
    assert unavailable_reason("cpu") is not None


def test_step_keys():
    a, b = StepKey(4, 8, True, False, True, False), StepKey(4, 8, True, False, True, False)
    assert a == b and hash(a) == hash(b) and len({a, b, StepKey(4, 8, True, False, True, True)}) == 2
    assert a.rows == 32 and str(a) == "B4xF8+cfg+noise"


def test_host_step_pads_writes_with_the_dump_slot():
    calls = [ModelCall("fifo", (10, 11, 12), (0, 1, 2), (5, 4, 3), writes=(0, 2)),
             ModelCall("fifo", (12, 13, 14), (2, 3, 4), (3, 2, 1), writes=(1,), renoised=(2,))]
    h = host_step(calls, dump_slot=9)
    assert h.slots == [0, 1, 2, 2, 3, 4] and h.levels == [5, 4, 3, 3, 2, 1]
    # slot 2 is read twice (written by window 0 only) and slot 3 written by window 1: fixed N = 6 rows
    assert h.write_slots == [0, 9, 2, 9, 3, 9] and h.writes == [0, 2, 4] and h.renoised == [5]


def step_inputs(n=6, noise=True):
    return StepInputs(torch.arange(n), torch.arange(n), torch.arange(n), torch.randn(n, 2) if noise else None,
                      None, None, torch.randn(2, 3, 4))


def test_static_inputs_are_updated_and_reset_in_place():
    first = step_inputs()
    static = StaticInputs(first)
    ptrs = static.pointers()
    assert set(ptrs) == {"slots", "levels", "write_slots", "noise", "cond"}
    for _ in range(3):
        new = step_inputs()
        static.update(new)
        assert torch.equal(static.buffers["noise"], new.noise) and static.pointers() == ptrs
    static.reset()
    assert static.pointers() == ptrs and not static.buffers["noise"].any() and not static.buffers["cond"].any()
    with pytest.raises(ValueError, match="do not match the static buffers"):
        static.update(step_inputs(n=5))
    with pytest.raises(ValueError, match="do not match"):
        static.update(step_inputs(noise=False))


@pytest.mark.parametrize("name, overrides", [("vc2-fifo", dict(num_steps=16, window=8)),
                                             ("vc2-miga-stream", dict(SMALL_MIGA, solver="flow_unipc"))])
def test_fake_graph_runner_is_exact_and_captures_once_per_kind(toy, name, overrides):
    ref = run(engine(toy, name, "eager", **overrides), 14)
    e = engine(toy, name, "compile", **overrides)
    runner = with_fake_graphs(e)
    seen = []

    def snapshot(event):
        seen.append({**e.ring.pointers(), **runner.pointers()})

    with torch.no_grad():
        ours = torch.stack(list(e.run(14, on_event=snapshot)))
    # warm-up and capture ran the step 4 times per kind, all into the dump slot: the video is unchanged
    assert torch.equal(ours, ref)
    assert runner.captures == {k: 1 for k in e.step_kinds} and not runner.fallbacks
    last = seen[-1]
    assert all(last[k] == v for ptrs in seen for k, v in ptrs.items())  # nothing ever reallocated
    runner.reset()
    assert runner.pointers() == {k: v for k, v in last.items() if k in runner.pointers()}


def test_graph_pool_budget_falls_back_to_the_static_step(toy):
    overrides = dict(SMALL_MIGA, solver="flow_unipc")
    ref = run(engine(toy, "vc2-miga-stream", "eager", **overrides), 14)
    e = engine(toy, "vc2-miga-stream", "compile", **overrides)
    runner = with_fake_graphs(e, grown=100, pool_budget_bytes=1)
    assert torch.equal(run(e, 14), ref)
    assert len(runner.captures) == 1 and len(runner.fallbacks) == len(e.step_kinds) - 1 == 2
    assert all("budget 1" in why for why in runner.fallbacks.values())


def test_graphs_are_recaptured_when_the_ring_moves(toy):
    e = engine(toy, "vc2-miga", "compile", **SMALL_MIGA)
    runner = with_fake_graphs(e)
    run(e, 8)
    ring, first = e.ring.latents, set(runner.captures)
    run(e, 14)  # offline MIGA: a longer video needs a bigger ring, so the captured addresses are stale
    assert e.ring.latents.data_ptr() != ring.data_ptr()
    assert first and all(runner.captures[k] == 2 for k in first)


def test_moved_weights_or_solver_tables_are_recaptured(toy):
    model = ToyDenoiser(4, 8).eval()
    cfg = preset("vc2-fifo", num_steps=16, window=8)
    cond = torch.randn(1, 3, 8)
    e = Engine(model, make_solver(cfg.solver, cfg.num_steps), cfg, SHAPE, cond=cond, uncond=cond * 0.1,
               guidance_scale=3.0, seed=3, mode="compile")
    runner = with_fake_graphs(e)
    run(e, 8)
    kinds = set(runner.captures)
    e.reset(3, cond, cond * 0.1)  # weights unchanged: the graphs are kept
    run(e, 8)
    assert runner.captures == {k: 1 for k in kinds}
    model.conv.weight = torch.nn.Parameter(model.conv.weight.detach().clone())  # new address, same values
    e.reset(3, cond, cond * 0.1)
    first = run(e, 8)
    assert runner.captures == {k: 2 for k in kinds}
    e.solver.alphas = e.solver.alphas.clone()  # a moved table is seen on the next call, not only on reset
    e.reset(3, cond, cond * 0.1)
    assert torch.equal(run(e, 8), first)
    assert runner.captures == {k: 3 for k in kinds}


@pytest.mark.gpu
@pytest.mark.parametrize("name, overrides", [("vc2-fifo", dict(num_steps=16, window=8)),
                                             ("vc2-miga-stream", dict(SMALL_MIGA, solver="flow_unipc"))])
def test_cuda_graphs_match_eager(name, overrides):
    cfg = preset(name, **overrides)
    model = ToyDenoiser(4, 8).eval().cuda()
    cond = torch.randn(1, 3, 8, device="cuda")
    outs = {}
    for mode in ("eager", "graph"):
        e = Engine(model, make_solver(cfg.solver, cfg.num_steps), cfg, SHAPE, cond=cond, uncond=cond * 0.1,
                   guidance_scale=3.0, seed=3, device="cuda", mode=mode)
        outs[mode] = run(e, 8)
    torch.testing.assert_close(outs["graph"], outs["eager"], rtol=1e-4, atol=1e-4)


class FailingBackend(FakeBackend):
    """A capture that raises, as CUDA does for a step with a host sync."""

    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_falls_back_to_the_plain_step_under_auto(toy):
    ref = run(engine(toy, "vc2-fifo", "eager", num_steps=16, window=8), 12)
    e = engine(toy, "vc2-fifo", "compile", num_steps=16, window=8)
    e.stepper.runner = GraphRunner(e.spec, e.device, backend=FailingBackend(), fallback_on_failure=True)
    assert torch.equal(run(e, 12), ref)  # same latents: every kind ran as in eager mode
    runner = e.stepper.runner
    assert runner.fallbacks and all("capture failed (RuntimeError" in why for why in runner.fallbacks.values())
    strict = engine(toy, "vc2-fifo", "compile", num_steps=16, window=8)
    strict.stepper.runner = GraphRunner(strict.spec, strict.device, backend=FailingBackend())
    with pytest.raises(RuntimeError, match="stream is capturing"):  # mode "graph" asked for: the error shows
        run(strict, 12)
