"""The planner's traces equal the independent re-derivation of the official schedules."""

import pytest

from miga_fast.plan import preset, scripted_reflect, trace_records

from .official_reference import fifo_trace, miga_vc2_trace


def _first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"call {i}: planner {x} != reference {y}"
    return f"lengths differ: planner {len(a)} vs reference {len(b)}"


@pytest.mark.parametrize("lookahead", [True, False])
@pytest.mark.parametrize("n", [8, 40, 120])
def test_fifo_trace_matches_official(lookahead, n):
    name = "vc2-fifo" if lookahead else "vc2-fifo-nolookahead"
    ours = list(trace_records(preset(name), n))
    ref = fifo_trace(64, 16, lookahead, n)
    assert ours == ref, _first_difference(ours, ref)


@pytest.mark.parametrize("n", [16, 40, 120])
def test_vc2_miga_trace_matches_official(n):
    ours = list(trace_records(preset("vc2-miga"), n))
    ref = miga_vc2_trace(n)
    assert ours == ref, _first_difference(ours, ref)


@pytest.mark.parametrize("triggers,accept", [((), None), ((1,), 2), ((0, 3), None), ((2, 5), 4)])
def test_vc2_miga_reflection_trace_matches_official(triggers, accept):
    cfg = preset("vc2-miga", reflection=True)
    ours = list(trace_records(cfg, 120, scripted_reflect(set(triggers), accept)))
    ref = miga_vc2_trace(120, reflection=True, triggers=triggers, accept=accept)
    assert ours == ref, _first_difference(ours, ref)
    if triggers:
        assert any(r["phase"] == "rollout" for r in ours)


@pytest.mark.parametrize("overrides", [
    dict(zigzag=2, guidance_frames=2, stride=4, num_steps=32, end_level=5, refine_level=5),
    dict(zigzag=1, guidance_frames=0, stride=8),
    dict(zigzag=8, guidance_frames=4, stride=6, refine_level=0),
])
def test_miga_variants_match_official(overrides):
    cfg = preset("vc2-miga", **overrides)
    ours = list(trace_records(cfg, 48))
    ref = miga_vc2_trace(48, T=cfg.num_steps, L=cfg.zigzag, m=cfg.guidance_frames, S=cfg.stride,
                         end=cfg.end_level, refine=cfg.refine_level)
    assert ours == ref, _first_difference(ours, ref)
