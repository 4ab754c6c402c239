"""Train-inference gap probe: patterns, per-frame matching and the study runner on tiny random models."""

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from miga_fast.cli import main
from miga_fast.models.tiny.bundle import TinySpec, TinyVideoModel
from miga_fast.pipeline import load
from miga_fast.quality.gap import heldout_clips, level_patterns, probe_gap, summarise_gap
from miga_fast.quality.study import (
    BASIC,
    PROMPTS,
    VARIANTS,
    comparison_pairs,
    complete_groups,
    paired_differences,
    render_pack,
    run_study,
    to_uint8,
    variants_named,
)
from tests.tiny_model import TINY


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny windows are far too small for intra-op threads; on a busy 2-core box they only spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_patterns():
    pats = {p.name: p for p in level_patterns(8)}
    assert {n: p.span(8) for n, p in pats.items()} == {
        "flat": 0, "zigzag L=4": 1, "zigzag L=2": 3, "fifo diagonal": 7,
        "zigzag L=4 x2": 2, "zigzag L=2 x2": 6, "fifo diagonal x2": 14}
    assert pats["zigzag L=2"].levels(5, 8) == [5, 5, 6, 6, 7, 7, 8, 8]
    assert pats["fifo diagonal"].levels(0, 8) == list(range(8))


def test_heldout_clips_are_fresh():
    a, pa = heldout_clips(3, 8, 8, seed=0)
    b, _ = heldout_clips(3, 8, 8, seed=1)
    assert a.shape == (3, 3, 8, 8, 8) and len(pa) == 3 and not torch.equal(a, b)
    assert torch.equal(a, heldout_clips(3, 8, 8, seed=0)[0])


class FrameLocal:
    """A denoiser with no cross-frame interaction: a mixed window must score exactly like flat ones."""

    def __init__(self):
        self.spec = TINY
        self.text = SimpleNamespace(encode=lambda prompts: torch.zeros(len(prompts), 4, 16))

    def denoise(self, x, t, cond):
        return x * (t / 1000)[:, None, :, None, None] - 0.3


@pytest.mark.parametrize("arch", ["wan", "vc2"])
def test_per_frame_matching_is_exact(arch):
    model = FrameLocal()
    if arch == "vc2":  # epsilon prediction, DDIM levels (the tiny-vc2 presets)
        model.spec = TinySpec.vc2(frame_size=8)
    rows = probe_gap(model, clips=2, num_steps=16)
    assert all(r["mixed_mse"] == pytest.approx(r["flat_mse"], rel=1e-5) for r in rows)
    summary = summarise_gap(rows)
    assert all(s["ratio"] == pytest.approx(1, rel=1e-5) for s in summary)


def test_probe_scores_an_epsilon_model_against_the_noise_it_was_given():
    """An oracle UNet-style denoiser (exact eps from DDIM's forward process) has zero error in every window."""
    from miga_fast.solvers.ddim import vc2_alphas_cumprod

    acp = torch.tensor(vc2_alphas_cumprod(), dtype=torch.float32)
    clips, _ = heldout_clips(1, 8, 8, seed=0)

    class Oracle(FrameLocal):
        def __init__(self):
            super().__init__()
            self.spec = TinySpec.vc2(frame_size=8)

        def denoise(self, x, t, cond):  # x [B, 3, F, H, W], t [B, F] integer DDPM steps
            a = acp[t.long()][:, None, :, None, None]
            return (x - a.sqrt() * clips[0]) / (1 - a).sqrt()

    rows = probe_gap(Oracle(), clips=1, num_steps=16)
    assert max(r["mixed_mse"] for r in rows) < 1e-8


def test_probe_bookkeeping_on_random_model():
    T = 16
    model = TinyVideoModel(TINY).eval()
    rows = probe_gap(model, clips=2, num_steps=T)
    pats = level_patterns(8)
    assert len(rows) == 2 * sum(T - p.span(8) for p in pats)
    for p in pats:
        sel = [r for r in rows if r["pattern"] == p.name and r["clip"] == 0]
        assert [r["start"] for r in sel] == list(range(T - p.span(8)))  # every start, in order
        assert all(r["mean_level"] == pytest.approx(np.mean(p.levels(r["start"], 8))) for r in sel)
        assert all(np.isfinite(r["mixed_mse"]) and r["mixed_mse"] > 0 for r in sel)
    flat = [r for r in rows if r["pattern"] == "flat"]
    assert all(r["mixed_mse"] == r["flat_mse"] for r in flat)
    summary = summarise_gap(rows)
    assert [s["span"] for s in summary] == sorted(s["span"] for s in summary)
    assert all(s["ratio_lo"] <= s["ratio"] <= s["ratio_hi"] for s in summary)


def test_variants_are_valid_configs():
    from miga_fast.plan import preset

    for family in ("tiny", "tiny-vc2"):
        for v in VARIANTS:
            preset(f"{family}-{v.mode}", **v.overrides)  # validates: zigzag=1 with guidance, end_level=1, ...
    assert [v.name for v in variants_named(BASIC)] == list(BASIC)
    with pytest.raises(ValueError, match="unknown variant"):
        variants_named(["miga zigzag=3"])


def test_study_cli_end_to_end(weights, tmp_path, capsys):
    out = tmp_path / "quality"
    names = ["fifo", "miga", "miga-stream", "miga no stage 2", "miga + reflection"]  # all 8: same code, 2x time
    assert main(["eval", "--study", "--seeds", "1", "--prompts", "1", "--frames", "8", "--out", str(out),
                 "--model", str(weights), "--workers", "1", "--gap-clips", "1", "--variants", ",".join(names)]) == 0
    for name in ("videos.csv", "per_frame.csv", "gap.csv", "table.md", "README.md", "metrics_vs_frame.png",
                 "gap_vs_span.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "videos.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == names
    assert all(r["frames"] == "8" and 0 <= float(r["subject_consistency"]) <= 1 for r in rows)
    for key in ("shape_accuracy", "motion_accuracy"):  # the scorer's columns (nan: nothing judged in the video)
        assert all(math.isnan(float(r[key])) or 0 <= float(r[key]) <= 1 for r in rows), key
    table = (out / "table.md").read_text()
    assert "shape_accuracy ↑" in table and "motion_accuracy ↑" in table
    assert "miga − fifo" in table and "miga-stream − miga" in table and "fifo diagonal" in table
    assert "miga-fast eval --study --seeds 1" in (out / "README.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_study_parallel_matches_serial(weights):
    kw = dict(variants=variants_named(["fifo", "miga-stream"]), prompts=PROMPTS[:1], seeds=[0, 1], frames=6)
    serial = run_study(weights, workers=1, **kw)
    parallel = run_study(weights, workers=2, **kw)
    assert [(r["variant"], r["seed"]) for r in serial] == [("fifo", 0), ("fifo", 1), ("miga-stream", 0),
                                                           ("miga-stream", 1)]
    for a, b in zip(serial, parallel, strict=True):
        assert (a["variant"], a["seed"]) == (b["variant"], b["seed"])
        assert a["subject_consistency"] == pytest.approx(b["subject_consistency"], abs=1e-6)
    one_per_pack = run_study(weights, workers=1, pack=1, **kw)  # rows: fifo 0, miga-stream 0, fifo 1, ...
    assert one_per_pack[0]["seed"] == 0 and one_per_pack[2]["seed"] == 1
    assert one_per_pack[0]["subject_consistency"] != one_per_pack[2]["subject_consistency"]  # own noise per pack
    d = paired_differences(serial, "miga-stream", "fifo", "temporal_flickering")
    assert d.shape == (2,)


def test_study_scores_what_users_get(weights):
    """A pack of one video is exactly `stream`'s frames; in a pack, each video follows its own prompt."""
    gen = load(weights)
    miga = variants_named(["miga"])[0]
    single = render_pack(gen, miga, [(PROMPTS[0], 3)], 10, seed=3)[0]
    stream = np.stack(list(gen.stream(PROMPTS[0], 10, mode="miga", seed=3)))
    assert np.array_equal(to_uint8(single), stream)
    packed = render_pack(gen, miga, [(PROMPTS[0], 0), (PROMPTS[1], 0)], 10)
    assert packed.shape == (2, 10, *single.shape[1:]) and torch.isfinite(packed).all()
    assert not torch.allclose(packed[0], packed[1])


def test_comparison_pairs():
    names = ["fifo", "miga", "miga-stream", "miga zigzag=4", "miga no guidance"]
    pairs = comparison_pairs(names)
    assert pairs[:4] == [("miga", "fifo"), ("miga-stream", "fifo"), ("miga zigzag=4", "fifo"),
                         ("miga no guidance", "fifo")]
    assert ("miga-stream", "miga") in pairs and ("miga zigzag=4", "miga") in pairs
    assert ("miga no guidance", "miga") in pairs and len(pairs) == len(set(pairs)) == 7


def test_bad_eval_arguments(weights):
    for argv in (["--prompts", "99"], ["--variants", "nope"], ["--frames", "4"]):
        with pytest.raises(SystemExit) as exc:
            main(["eval", "--model", str(weights), *argv])
        assert exc.value.code == 2


def test_budget_cut_keeps_complete_groups_only(weights):
    import time

    kw = dict(variants=variants_named(["fifo"]), prompts=PROMPTS[:1], seeds=[0], frames=4)
    assert run_study(weights, deadline=time.perf_counter() - 1, **kw) == []
    rows = [{"variant": v, "prompt": "p", "seed": s} for s in (0, 1) for v in ("fifo", "miga")][:-1]
    assert [(r["variant"], r["seed"]) for r in complete_groups(rows)] == [("fifo", 0), ("miga", 0)]


def test_mean_ci_skips_nan():
    from miga_fast.quality.study import mean_ci

    assert mean_ci([0.5, float("nan"), 1.0])[0] == 0.75
    assert all(math.isnan(v) for v in mean_ci([float("nan")]))


def test_bootstrap_interval_and_wins():
    from miga_fast.quality.study import difference_table, mean_ci

    x = np.random.default_rng(1).normal(0.3, 1.0, 400)
    mean, lo, hi = mean_ci(x, "bootstrap")
    half = 1.96 * x.std(ddof=1) / 20
    assert mean == pytest.approx(x.mean()) and lo == pytest.approx(mean - half, abs=0.02)
    assert hi == pytest.approx(mean + half, abs=0.02) and mean_ci(x, "bootstrap") == (mean, lo, hi)  # seeded
    with pytest.raises(ValueError, match="method must be one of"):
        mean_ci(x, "normal")
    from miga_fast.quality.study import METRICS

    # colour error: lower is better; a's is lower in 2 of 3 pairs; every other metric ties (no wins)
    errors = [(0.1, 0.2), (0.3, 0.2), (0.3, 0.4)]
    rows = [{"variant": v, "prompt": "p", "seed": seed, **dict.fromkeys(METRICS, 0.0), "colour_error": err}
            for seed, pair in enumerate(errors) for v, err in zip("ab", pair, strict=True)]
    cells = difference_table(rows, [("a", "b")], "bootstrap")[2].strip("| ").split(" | ")[1:]
    by_metric = dict(zip(METRICS, cells, strict=True))
    assert by_metric["colour_error"].endswith("(wins 2/3)") and by_metric["subject_consistency"].endswith("(wins 0/3)")


def test_t_interval():
    from miga_fast.quality.study import mean_ci, t_quantile

    assert t_quantile(4) == 2.776 and 2.086 < t_quantile(17) < 2.131 and abs(t_quantile(10**6) - 1.96) < 1e-3
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == mean - lo == pytest.approx(4.303 / 3**0.5)
