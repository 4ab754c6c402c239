"""wan-miga equals the independent re-derivation of the official Wan2.1 loops; Wan plans keep the
planner invariants; the engine honours the Jacobi stage-1 groups and the Wan reflection score."""

import collections
import json

import pytest
import torch

from miga_fast import ConfigError
from miga_fast.cli import main
from miga_fast.models.toy import ToyDenoiser
from miga_fast.plan import (
    Emit,
    ModelCall,
    NewLatent,
    drive,
    make_plan,
    preset,
    ring_capacity,
    scripted_reflect,
    trace_records,
)
from miga_fast.plan.miga_wan import official_iterations
from miga_fast.plan.trace import never_reflect
from miga_fast.runtime import Engine
from miga_fast.runtime.scores import frame_similarity
from miga_fast.solvers import FlowUniPCSolver

from .official_reference_wan import miga_wan_trace
from .test_invariants import check_plan


def _first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"call {i}: planner {x} != reference {y}"
    return f"lengths differ: planner {len(a)} vs reference {len(b)}"


def _kept(cfg, n, decide=never_reflect):
    return [ev.serial for ev in drive(make_plan(cfg, n), decide) if isinstance(ev, Emit) and ev.keep]


def _reference(cfg, n, **kw):
    """miga_wan_trace with the official literals taken from `cfg` (defaults: the preset's values)."""
    return miga_wan_trace(official_iterations(cfg, n), T=cfg.num_steps, L=cfg.zigzag, m=cfg.guidance_frames,
                          f0=cfg.window, slide_size=cfg.stride, end_gap=cfg.end_level,
                          judged_step=cfg.num_steps - 1 - cfg.judged_level, guide_blocks=cfg.reflect_blocks,
                          rollouts=cfg.candidates, refine_noise_index=cfg.refine_level + 1, **kw)


# N -> official long_iter_nums n: 1 -> 4 (the smallest that runs), 8 -> 5, 119 -> 20 (YAML default),
# 259 -> 40 (the fill breaks early: stage 1 pops and appends), 300 -> 46.
@pytest.mark.parametrize("n", [1, 8, 119, 259, 300])
def test_wan_miga_trace_matches_official(n):
    cfg = preset("wan-miga")
    ours = list(trace_records(cfg, n))
    ref, output = _reference(cfg, n)
    assert ours == ref, _first_difference(ours, ref)
    assert _kept(cfg, n) == output[:n]  # the official output drops the last f0 latents


@pytest.mark.parametrize("n", [119, 300])
@pytest.mark.parametrize("triggers,accept", [((1,), 2), ((0, 3), None), ((2, 5, 9), 0), (tuple(range(11)), 1)])
def test_wan_miga_reflection_trace_matches_official(n, triggers, accept):
    cfg = preset("wan-miga")
    decide = scripted_reflect(set(triggers), accept)
    ours = list(trace_records(cfg, n, decide))
    ref, output = _reference(cfg, n, involve_resample=True, triggers=triggers, accept=accept)
    assert ours == ref, _first_difference(ours, ref)
    assert any(r["phase"] == "rollout" for r in ours)
    assert _kept(cfg, n, scripted_reflect(set(triggers), accept)) == output[:n]


@pytest.mark.parametrize("overrides", [
    # L = 3: the literal far-guidance offset 3 differs from VC2's L//2 = 1.
    dict(zigzag=3, guidance_frames=2, stride=6, num_steps=40, end_level=6, refine_level=5, judged_level=30,
         reflect_blocks=6),
    dict(window=12, zigzag=4, guidance_frames=3, stride=5, num_steps=30, end_level=4, refine_level=3,
         judged_level=20),
    dict(zigzag=21, guidance_frames=0, stride=21, reflection=False),
])
def test_wan_variants_match_official(overrides):
    cfg = preset("wan-miga", **overrides)
    for n, triggers in ((40, (1, 4)), (200, ())):
        ours = list(trace_records(cfg, n, scripted_reflect(set(triggers), 1)))
        ref, _ = _reference(cfg, n, involve_resample=cfg.reflection, triggers=triggers, accept=1)
        assert ours == ref, _first_difference(ours, ref)


@pytest.mark.parametrize("n_official,windows", [
    (20, dict(fill=184, stage1=518, stage2=138, refine=138)),
    (45, dict(fill=618, stage1=1425, stage2=313, refine=313)),
])
def test_window_counts_match_the_specification(n_official, windows):
    """Windows per phase as counted in /work/notes/wan_miga_schedule.md (model-call totals table)."""
    cfg = preset("wan-miga")
    n = n_official * cfg.zigzag - cfg.window
    assert official_iterations(cfg, n) == n_official
    assert collections.Counter(r["phase"] for r in trace_records(cfg, n)) == windows


def test_reference_reproduces_the_official_n3_crash_case():
    """n = 3 runs every model call (spec table: 10/174/10/10) and then has nothing to decode."""
    ref, output = miga_wan_trace(3)
    assert collections.Counter(r["phase"] for r in ref) == dict(fill=10, stage1=174, stage2=10, refine=10)
    assert output == []


def check_wan_plan(cfg, n, decide=never_reflect):
    """check_plan on a Wan plan, then the Wan level path.

    check_plan's last assertion is the VC2 level path (stage 2 starts one level below the pop level,
    level 0 is never stepped). The official Wan path differs on purpose: stage 2 repeats the pop
    level (off-by-one label) and refine steps level 0 to reach sigma 0. All of check_plan's other
    checks run before that assertion, so exactly that one must fail; then we check Wan's path.
    """
    with pytest.raises(AssertionError, match=r"^latent \d+ levels \["):
        check_plan(cfg, n, decide)
    top, stepped, refined, kept = {}, collections.defaultdict(list), collections.defaultdict(list), []
    for ev in drive(make_plan(cfg, n), decide):
        if isinstance(ev, NewLatent):
            top[ev.serial] = ev.level
        elif isinstance(ev, ModelCall):
            for p in ev.writes:
                (refined if ev.phase == "refine" else stepped)[ev.serials[p]].append(ev.levels[p])
        elif isinstance(ev, Emit) and ev.keep:
            kept.append(ev.serial)
    end, refine = cfg.end_level, cfg.refine_level
    for s in kept:
        assert stepped[s] == list(range(top[s], end - 1, -1)) + list(range(end, 0, -1)), f"latent {s}"
        assert refined[s] == list(range(refine, -1, -1)), f"latent {s}"


@pytest.mark.parametrize("name", ["wan-miga", "wan-miga-stream"])
@pytest.mark.parametrize("n,triggers,accept", [(1, (), None), (30, (1,), 0), (119, (0, 2), 2), (300, (3,), None)])
def test_wan_plans_keep_invariants(name, n, triggers, accept):
    check_wan_plan(preset(name), n, scripted_reflect(set(triggers), accept))


def test_wan_stream_memory_is_bounded():
    cfg = preset("wan-miga-stream")
    assert ring_capacity(cfg, 50) == ring_capacity(cfg, 2000)
    check_wan_plan(cfg, 2000)


@pytest.mark.parametrize("overrides,argument", [
    (dict(zigzag=1, window=21), "zigzag"),  # official far offset 3 would wrap around
    (dict(refine_level=0), "refine_level"),
    (dict(reflect_blocks=1), "reflect_blocks"),  # rollouts assume guide + one block = f0
    (dict(mode="fifo"), "mode"),
    (dict(family="sd"), "family"),
    (dict(zigzag=5), "zigzag"),  # L must divide f0 (official levels drift otherwise)
])
def test_bad_wan_config_names_argument(overrides, argument):
    with pytest.raises(ConfigError, match=argument):
        preset("wan-miga", **overrides)


def test_cli_trace_wan(capsys):
    assert main(["trace", "--preset", "wan-miga", "--latents", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 266  # n = 4: 15 fill + 199 stage-1 + 26 stage-2 + 26 refine windows
    first = json.loads(lines[0])
    assert first["phase"] == "fill" and len(first["inputs"]) == 21 and first["writes"] == [[0, 0]]


# ---------------------------------------------------------------- engine: groups and score
SHAPE = (4, 6, 6)
SMALL_WAN = dict(num_steps=16, window=6, zigzag=3, guidance_frames=2, stride=3, end_level=3, refine_level=3,
                 judged_level=10, reflect_blocks=1, candidates=2)


def _engine(cfg, **kw):
    g = torch.Generator().manual_seed(1)
    model = ToyDenoiser(channels=4, cond_dim=8).eval()
    return Engine(model, FlowUniPCSolver(cfg.num_steps), cfg, SHAPE, cond=torch.randn(1, 3, 8, generator=g),
                  uncond=torch.randn(1, 3, 8, generator=g) * 0.1, guidance_scale=5.0, seed=3, **kw)


@pytest.mark.parametrize("name", ["wan-miga", "wan-miga-stream"])
def test_split_groups_still_read_pre_iteration_values(name):
    """Stage-1 guidance reads latents other calls of the same group write: batches of one window must
    give the whole-group result (the engine holds a split group's writes until the group ends)."""
    cfg = preset(name, **SMALL_WAN, reflection=False)
    outs, calls = [], []
    for wb in (0, 1, 2):
        engine = _engine(cfg, window_batch=wb)
        with torch.no_grad():
            outs.append(torch.stack(list(engine.run(8))))
        calls.append(engine.stats.model_calls)
    assert calls[0] < calls[2] < calls[1]  # the groups really were batched, then split
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=0, atol=1e-5)


def test_wan_reflection_runs_in_the_engine():
    cfg = preset("wan-miga", **SMALL_WAN, reflect_threshold=-1.0)  # every check after the first fires
    engine = _engine(cfg)
    with torch.no_grad():
        out = torch.stack(list(engine.run(12)))
    assert out.shape == (12, *SHAPE) and torch.isfinite(out).all()
    assert engine.stats.reflection_triggers == engine.stats.reflection_checks - 1 > 0


def test_frame_similarity_is_the_official_adjust_judge():
    """Literal transcription of `adjust_judge` (t2v:341-358) under bf16 autocast, on [1, C, 1, H, W] latents."""
    g = torch.Generator().manual_seed(0)
    judged, guide = torch.randn(7, 16, 6, 10, generator=g), torch.randn(14, 16, 6, 10, generator=g) + 0.3

    def adjust_judge(saved_latents, new_gen_latents):
        vecs = []
        for latents in (saved_latents, new_gen_latents):
            feats = torch.stack([x[:, None] for x in latents], dim=0)
            f, d, _, h, w = feats.shape
            vecs.append(torch.nn.functional.normalize(feats.view(f, d, -1).mean(dim=1), p=2, dim=1))
        return (vecs[0] @ vecs[1].T).mean(0).mean(0)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        official = adjust_judge(list(judged), list(guide))
    ours = frame_similarity(judged, guide)
    assert official.dtype == ours.dtype == torch.bfloat16
    assert torch.equal(ours, official)
