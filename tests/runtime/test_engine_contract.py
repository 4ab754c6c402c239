"""Engine invariants: fixed buffers, clear errors, constant memory."""

import json
import subprocess
import sys

import pytest
import torch

from miga_fast import ConfigError
from miga_fast.models.toy import ToyDenoiser
from miga_fast.plan import ModelCall, preset
from miga_fast.runtime import Engine, EngineError
from miga_fast.solvers import DDIMSolver

SHAPE = (4, 6, 6)
SMALL = dict(num_steps=24, window=8, zigzag=2, guidance_frames=2, stride=4, end_level=3, refine_level=3)


def engine_for(name, model=None, **kw):
    cfg = preset(name, **({} if name.endswith("fifo") else SMALL)) if "miga" in name else \
        preset(name, num_steps=16, window=8)
    model = model or ToyDenoiser(4, 8).eval()
    return Engine(model, DDIMSolver(cfg.num_steps), cfg, SHAPE, cond=torch.zeros(1, 2, 8), **kw)


@pytest.mark.parametrize("name", ["vc2-fifo", "vc2-miga-stream"])
def test_buffers_never_move_after_warmup(name):
    engine = engine_for(name)
    seen = []

    def snapshot(event):
        seen.append(dict(engine.ring.pointers()))

    with torch.no_grad():
        list(engine.run(30, on_event=snapshot))
    first_seen = {}
    for ptrs in seen:
        for key, ptr in ptrs.items():
            assert first_seen.setdefault(key, ptr) == ptr, f"buffer {key} was reallocated during the run"
    gathers = [k for k in seen[-1] if k.startswith("gather.")]
    assert len(gathers) <= engine.cfg.window  # one reusable buffer per window length, at most f0 of them
    assert seen[len(seen) // 2].keys() <= seen[-1].keys()


def test_no_host_sync_in_the_step_path():
    """The per-call path (gather, denoise, CFG, solver step, scatter) never reads tensor values on the host."""
    engine = engine_for("vc2-fifo", guidance_scale=3.0, uncond=torch.zeros(1, 2, 8))
    calls = []
    original = engine._execute

    def traced(batch):
        calls.append(batch)
        orig_item, orig_bool = torch.Tensor.item, torch.Tensor.__bool__

        def forbid(*a, **k):
            raise AssertionError("host sync inside the step")

        torch.Tensor.item, torch.Tensor.__bool__ = forbid, forbid
        try:
            original(batch)
        finally:
            torch.Tensor.item, torch.Tensor.__bool__ = orig_item, orig_bool

    engine._execute = traced
    with torch.no_grad():
        out = list(engine.run(3))
    assert calls and len(out) == 3


def test_bad_inputs_give_one_clear_error():
    with pytest.raises(ConfigError, match="guidance_scale"):
        engine_for("vc2-fifo", guidance_scale=-1.0)
    engine = engine_for("vc2-fifo")
    with pytest.raises(EngineError, match=r"base clip must have shape \(8, 4, 6, 6\)"):
        list(engine.run(3, base=torch.zeros(8, 4, 5, 5)))
    bad_shape = engine_for("vc2-fifo", model=lambda x, t, c: x[:, :2])
    with pytest.raises(EngineError, match="denoiser returned shape"):
        list(bad_shape.run(3, base=torch.zeros(8, *SHAPE)))
    nan = engine_for("vc2-fifo", model=lambda x, t, c: x * float("nan"))
    with pytest.raises(EngineError, match="non-finite"):
        list(nan.run(3, base=torch.zeros(8, *SHAPE)))
    with pytest.raises(ConfigError, match="latents"):
        list(engine.run(0))


def test_plan_referencing_a_dead_latent_is_rejected(monkeypatch):
    import miga_fast.runtime.engine as eng

    real = eng.make_plan

    def corrupt(cfg, n):
        for ev in real(cfg, n):
            if isinstance(ev, ModelCall):
                ev = ModelCall(ev.phase, (999,) + ev.serials[1:], ev.slots, ev.levels, ev.writes, group=ev.group)
            yield ev

    monkeypatch.setattr(eng, "make_plan", corrupt)
    with pytest.raises(EngineError, match="serial 999.*not in the queue"):
        list(engine_for("vc2-fifo").run(2, base=torch.zeros(8, *SHAPE)))


PEAK_RSS = r"""
import json, resource, sys, torch
from miga_fast.plan import preset
from miga_fast.runtime import Engine
from miga_fast.solvers import DDIMSolver
name, n = sys.argv[1], int(sys.argv[2])
cfg = preset(name, num_steps=16, window=8) if name == "vc2-fifo" else preset(
    name, num_steps=16, window=4, zigzag=2, guidance_frames=1, stride=2, end_level=3, refine_level=2)
model = lambda x, t, c: 0.1 * x + 1e-4 * t[:, None, :, None, None]
engine = Engine(model, DDIMSolver(16), cfg, (4, 16, 16), cond=torch.zeros(1, 1, 1))
count = 0
with torch.no_grad():
    for latent in engine.run(n, base=torch.zeros(cfg.window, 4, 16, 16)):
        count += 1
print(json.dumps({"count": count, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.parametrize("name", ["vc2-fifo", "vc2-miga-stream"])
def test_memory_is_flat_from_200_to_2000_latents(name):
    peaks = {}
    for n in (200, 2000):
        res = subprocess.run([sys.executable, "-c", PEAK_RSS, name, str(n)], capture_output=True, text=True,
                             check=True, timeout=600)
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        assert rec["count"] == n
        peaks[n] = rec["peak_kb"]
    assert peaks[2000] <= peaks[200] * 1.02, peaks
