"""Schedule invariants, checked over many configurations with hypothesis."""

import collections

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miga_fast.plan import (
    Emit,
    IterationEnd,
    ModelCall,
    NewLatent,
    PlanConfig,
    Renoise,
    drive,
    make_plan,
    ring_capacity,
    scripted_reflect,
)
from miga_fast.plan.trace import never_reflect


@st.composite
def miga_configs(draw, mode="miga"):
    L = draw(st.sampled_from([1, 2, 4]))
    f0 = L * draw(st.integers(2, 6))
    m = draw(st.integers(0, min(4, f0 - 2)))
    T = draw(st.integers(f0 // L + 6, 40))
    end = draw(st.integers(1, T - f0 // L - 2))
    cfg = dict(mode=mode, num_steps=T, window=f0, zigzag=L, guidance_frames=m,
               stride=draw(st.integers(1, f0 - m)), end_level=end,
               refine_level=draw(st.integers(0, min(end + 2, T - 1))),
               stream_context=draw(st.integers(1, f0 - 1)))
    return PlanConfig(**cfg).validated()


def check_plan(cfg, n, decide=never_reflect):
    """Run a plan and check every invariant; returns (calls, kept emissions)."""
    f0 = cfg.window
    slot_owner = {}  # slot -> serial living there
    created_level = {}
    stepped = collections.defaultdict(list)  # serial -> levels at which it took a step (no refine)
    refined = collections.defaultdict(list)
    written_this_iteration = []
    emitted, calls = [], 0
    for ev in drive(make_plan(cfg, n), decide):
        if isinstance(ev, NewLatent):
            assert 0 <= ev.slot < ring_capacity(cfg, n)
            slot_owner[ev.slot] = ev.serial
            created_level[ev.serial] = ev.level
        elif isinstance(ev, ModelCall):
            calls += 1
            assert len(ev.serials) <= f0, "window longer than f0"
            assert ev.writes, "a call that writes nothing"
            for s, slot in zip(ev.serials, ev.slots, strict=True):
                assert slot_owner.get(slot) == s, f"latent {s} is not live in slot {slot}"
            if ev.phase in ("stage2", "refine"):
                assert len(set(ev.levels)) == 1, f"mixed levels in a {ev.phase} window: {ev.levels}"
            for p in ev.writes:
                s, level = ev.serials[p], ev.levels[p]
                (refined if ev.phase == "refine" else stepped)[s].append(level)
                if ev.phase in ("fill", "stage1", "fifo"):
                    written_this_iteration.append(s)
        elif isinstance(ev, IterationEnd):
            queue = ev.queue[cfg.padding:] if ev.phase == "fifo" else ev.queue
            assert sorted(written_this_iteration) == sorted(queue), "a queue latent did not move one level"
            written_this_iteration = []
        elif isinstance(ev, Renoise):
            assert all(slot_owner[sl] == s for s, sl in zip(ev.serials, ev.slots, strict=True))
        elif isinstance(ev, Emit):
            assert slot_owner[ev.slot] == ev.serial
            if ev.keep:
                emitted.append(ev.serial)
    assert len(emitted) == n
    assert emitted == sorted(emitted), "emitted out of order"
    lowest = 0 if cfg.mode == "fifo" else 1
    for s in emitted:
        top = created_level[s]
        assert stepped[s] == list(range(top, lowest - 1, -1)), f"latent {s} levels {stepped[s]}"
        if cfg.mode != "fifo" and cfg.refine_level:
            assert refined[s] == list(range(cfg.refine_level, -1 if cfg.final_step else 0, -1))
    return calls, emitted


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cfg=miga_configs(), n=st.integers(1, 60))
def test_miga_invariants(cfg, n):
    n = max(n, cfg.window)
    check_plan(cfg, n)


@SETTINGS
@given(cfg=miga_configs(mode="miga-stream"), n=st.integers(1, 60))
def test_miga_stream_invariants(cfg, n):
    check_plan(cfg, n)


@SETTINGS
@given(f0=st.sampled_from([2, 4, 6, 8]), parts=st.integers(1, 4), lookahead=st.booleans(),
       n=st.integers(1, 40))
def test_fifo_invariants(f0, parts, lookahead, n):
    cfg = PlanConfig(mode="fifo", num_steps=f0 * parts, window=f0, lookahead=lookahead).validated()
    check_plan(cfg, n)


@SETTINGS
@given(n_trigger=st.integers(0, 3), accept=st.one_of(st.none(), st.integers(0, 1)))
def test_reflection_keeps_invariants(n_trigger, accept):
    cfg = PlanConfig(mode="miga-stream", num_steps=24, window=8, zigzag=2, guidance_frames=2,
                     stride=4, end_level=3, refine_level=3, reflection=True, judged_level=15,
                     reflect_blocks=2, candidates=2).validated()
    check_plan(cfg, 40, scripted_reflect(set(range(0, 2 * n_trigger, 2)), accept))


def test_stream_memory_is_bounded():
    """miga-stream: the same fixed ring serves 50 and 3,000 latents (the allocator raises if not)."""
    cfg = PlanConfig(mode="miga-stream").validated()
    assert ring_capacity(cfg, 50) == ring_capacity(cfg, 3000)
    check_plan(cfg, 3000)


def test_flow_presets_take_the_final_step():
    """tiny-* (flow matching): every output latent's refine pass ends with the level-0 step (to sigma 0)."""
    from miga_fast.plan import preset

    for name in ("tiny-miga", "tiny-miga-stream"):
        check_plan(preset(name), 40)
