"""The quality study: same prompts and seeds through FIFO, MIGA, miga-stream and MIGA ablations.

    miga-fast eval --study --seeds 10 --prompts 4 --frames 512 --out bench/results/quality

Writes `videos.csv` (one row per rendered video), `per_frame.csv` (metric means per frame index),
`gap.csv` / `gap_rows.csv` (train-inference gap probe), `table.md` (means with 95% intervals over videos,
bootstrap by default, `--interval t` for Student t; paired differences, with wins per (prompt, seed), against
FIFO, miga-stream against miga and each ablation against MIGA) and PNG plots. Every rendered pack is kept in
`journal.jsonl` as it finishes: an interrupted or budget-cut study continues when the same command is run again.

Ablations are MIGA (offline, the official schedule) with one component changed through PlanConfig
overrides; what each one means on the tiny presets (T=16, f0=8, L_zig=2, m=2, end_level=3,
refine_level=3) is in `VARIANTS`.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from ..video import to_uint8
from .journal import Journal, file_sha256, pack_key
from .metrics import DIRECTION, all_metrics
from .scorer import score_video


@dataclass(frozen=True)
class Variant:
    """A named schedule: a pipeline mode plus PlanConfig overrides."""

    name: str
    mode: str
    overrides: dict = field(default_factory=dict, hash=False)
    note: str = ""


VARIANTS: list[Variant] = [
    Variant("fifo", "fifo", note="FIFO-Diffusion with lookahead (the family's fifo preset)"),
    Variant("fifo no lookahead", "fifo", {"lookahead": False},
            note="FIFO-Diffusion without lookahead: n disjoint windows instead of 2n half-overlapping ones"),
    Variant("miga", "miga", note="official offline MIGA (tiny presets: L_zig=2, m=2, reflection off)"),
    Variant("miga-stream", "miga-stream", note="MIGA with the bounded streaming stage 2 (ours)"),
    Variant("miga zigzag=1", "miga", {"zigzag": 1},
            note="no zigzag: one latent per level, i.e. a FIFO-style diagonal queue inside MIGA (m=2 kept)"),
    Variant("miga zigzag=4", "miga", {"zigzag": 4}, note="blocks of 4 latents per level (f0/L = 2 levels a window)"),
    Variant("miga no stage 2", "miga", {"end_level": 1, "refine_level": 0},
            note="end_level=1 (smallest valid): stage 2 takes end_level-1 = 0 steps and refine_level=0 "
                 "disables the refine pass, so stage 1 does all the denoising"),
    Variant("miga no guidance", "miga", {"guidance_frames": 0}, note="m=0: no long-range guidance latents"),
    Variant("miga + reflection", "miga", {"reflection": True},
            note="self-reflection on (K=3 rollouts, judged level 10, r=2)"),
]
BASIC = ("fifo", "fifo no lookahead", "miga", "miga-stream")
# --study default: reflection renders unpacked (one video per run), 40x the cost of the others: ask for it by name
STUDY = [v.name for v in VARIANTS if not v.overrides.get("reflection")]

# Distinct objects, backgrounds, motions and textures; colour pairs far apart so segmentation is clean.
PROMPTS = [
    "a red circle moving left on a striped blue background",
    "a yellow square moving right on a checkered purple background",
    "a white triangle moving down on a dotted green background",
    "a orange circle drifting on a plain gray background",
    "a blue square moving up on a striped yellow background",
    "a green triangle moving left on a checkered white background",
    "a purple circle moving right on a dotted orange background",
    "a gray square drifting on a plain red background",
]
SERIES = ("subject_consistency", "background_consistency", "temporal_flickering", "colour_error", "area_error",
          "count_ok")
METRICS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
           "colour_error", "area_error", "area_cv", "count_ok", "shape_accuracy", "motion_accuracy")
# from the scorer (scorer.py): shape right on judged frames, motion right per 8-frame window (nan: none judged)
SCORER = ("shape_accuracy", "motion_accuracy")


def variants_named(names: Iterable[str] | None) -> list[Variant]:
    by_name = {v.name: v for v in VARIANTS}
    if names is None:
        return list(VARIANTS)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {list(by_name)}")
    return [by_name[n] for n in names]


# ---------------------------------------------------------------- rendering + scoring (runs in workers)
_GEN = {}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _generator(model_path: str, threads: int, dtype: str = "float32"):
    if (model_path, dtype) not in _GEN:
        from ..pipeline import load

        _GEN[model_path, dtype] = load(model_path, dtype=DTYPES[dtype])
    torch.set_num_threads(threads)
    return _GEN[model_path, dtype]


@torch.no_grad()
def render_pack(gen, variant: Variant, videos: list[tuple[str, int]], frames: int, guidance: float = 4.0,
                seed: int = 0) -> torch.Tensor:
    """Output latents ``[V, N, C, H, W]`` of V videos ``(prompt, seed index)`` in ONE packed engine run.

    Packing V videos along channels (``runtime/batch.py``) makes each model call carry V videos. A video's
    noise is keyed by (``seed``, its position in the pack): callers give each pack its own seed, and the same
    seed and position to a (prompt, seed index) in every variant (paired comparisons).
    """
    from ..pipeline import LATENT_DTYPE
    from ..runtime.batch import PackedDenoiser, pack_conditions, unpack_latent
    from ..runtime.factory import make_engine

    cfg = gen.config(variant.mode, overrides=variant.overrides)
    n = len(videos)
    cond = pack_conditions([gen.encode(p) for p, _ in videos])
    uncond = pack_conditions([gen.encode("")] * n)
    shape = (n * 3, gen.frame_size, gen.frame_size)
    engine = make_engine(gen.bundle, cfg, denoise=PackedDenoiser(gen.bundle.denoise, n), latent_shape=shape,
                         guidance_scale=guidance, cond=cond, uncond=uncond, seed=seed, device=gen.device,
                         dtype=LATENT_DTYPE)
    return torch.stack([unpack_latent(x, n) for x in engine.run(frames)], dim=1)


def render_and_score(model_path: str, variant: Variant, videos: list[tuple[str, int]], frames: int,
                     guidance: float = 4.0, threads: int = 1, seed: int = 0, dtype: str = "float32") -> list[dict]:
    """Render a pack of videos (engine seed `seed`, the model's weights in `dtype`, latents fp32) and score each:
    one row per video with its scores and `series` (per-frame arrays); `seconds` is the pack's wall time divided
    by its size."""
    gen = _generator(model_path, threads, dtype)
    start = time.perf_counter()
    latents = render_pack(gen, variant, videos, frames, guidance, seed)
    seconds = (time.perf_counter() - start) / len(videos)
    rows = []
    for (prompt, seed), lat in zip(videos, latents, strict=True):
        video = to_uint8(lat)
        scores = all_metrics(video, prompt)
        read = score_video(video, prompt, window=8)
        scores.update({k: (getattr(read, k), None) for k in SCORER})
        rows.append({"variant": variant.name, "prompt": prompt, "seed": seed, "frames": frames, "seconds": seconds,
                     **{k: scores[k][0] for k in METRICS}, "series": {k: scores[k][1] for k in SERIES}})
    return rows


def run_study(model_path: str | os.PathLike, variants: list[Variant], prompts: list[str], seeds: Iterable[int],
              frames: int, *, guidance: float = 4.0, workers: int = 1, pack: int = 4, deadline: float | None = None,
              progress: Callable[[list[dict], int], None] | None = None, dtype: str = "float32",
              journal: str | os.PathLike | None = None) -> list[dict]:
    """Every (variant, prompt, seed): the videos in packs of up to `pack` (reflection: 1, its decisions would
    be shared by a pack), each pack through every variant, on `workers` processes sharing the CPU's threads.

    Past `deadline` (time.perf_counter) no new pack starts; `complete_groups` then keeps only the
    (prompt, seed) groups every variant rendered. Rows in task order. `journal` (a path): packs already in it
    are not rendered again, and each new pack is appended to it when done (see journal.py).
    `progress(rows, videos_done)`: once per new pack, and first with no rows if the journal had some.
    """
    videos = [(p, s) for s in seeds for p in prompts]
    tasks = []
    for i in range(0, len(videos), pack):  # pack-major: a deadline cuts whole packs of every variant
        for v in variants:
            chunk = videos[i : i + pack]
            # engine seed = index of the pack's first video: (seed, position in pack) is unique per video and
            # the same in every variant (paired comparisons)
            tasks += ([(v, [one], i + k) for k, one in enumerate(chunk)] if v.overrides.get("reflection")
                      else [(v, chunk, i)])
    model_path = str(model_path)
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    book = Journal(journal) if journal is not None else None
    sha = file_sha256(model_path) if book else ""
    keys = [pack_key(sha, v.name, pack_videos, seed, frames, guidance, dtype) for v, pack_videos, seed in tasks]
    done: list[list[dict] | None] = [book.get(k) if book else None for k in keys]

    def late():
        return deadline is not None and time.perf_counter() > deadline

    def videos_done() -> int:
        return sum(len(rows) for rows in done if rows)

    def finished(i: int, rows: list[dict]) -> None:
        done[i] = rows
        if book:
            book.add(keys[i], rows)
        if progress:
            progress(rows, videos_done())

    todo = [i for i, rows in enumerate(done) if rows is None]
    if progress and len(todo) < len(tasks):
        progress([], videos_done())
    if workers <= 1:
        for i in todo:
            if late():
                break
            v, pack_videos, seed = tasks[i]
            finished(i, render_and_score(model_path, v, pack_videos, frames, guidance, threads, seed, dtype))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(render_and_score, model_path, *tasks[i][:2], frames, guidance, threads,
                                   tasks[i][2], dtype): i for i in todo}
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                finished(futures[fut], fut.result())
                if late():
                    for f in futures:
                        f.cancel()  # only tasks not yet started; running ones finish
    return [r for rows in done if rows for r in rows]


def complete_groups(rows: list[dict]) -> list[dict]:
    """Only the (prompt, seed) groups every variant rendered, so all variants average the same videos."""
    names = set(r["variant"] for r in rows)
    have: dict[tuple, set] = {}
    for r in rows:
        have.setdefault((r["prompt"], r["seed"]), set()).add(r["variant"])
    return [r for r in rows if have[(r["prompt"], r["seed"])] == names]


def measure_speed(model_path: str | os.PathLike, variants: list[Variant], frames: int = 64, pack: int = 4,
                  prompt: str = PROMPTS[0], threads: int = 2, dtype: str = "float32") -> dict[str, float]:
    """Video frames per second of each variant rendered as one pack of `pack` videos (model loaded first)."""
    gen = _generator(str(model_path), threads, dtype)
    out = {}
    for v in variants:
        size = 1 if v.overrides.get("reflection") else pack
        start = time.perf_counter()
        render_pack(gen, v, [(prompt, i) for i in range(size)], frames)
        out[v.name] = size * frames / (time.perf_counter() - start)
    return out


# ---------------------------------------------------------------- statistics
# Two-sided 95% Student t quantiles t_{0.975}(df): for few videos per cell, where a normal or bootstrap
# interval would be too narrow. Between tabulated df we interpolate linearly in 1/df.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def t_quantile(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom (1.96 beyond 120)."""
    if df in _T975:
        return _T975[df]
    if df > 120:
        return 1.96 + (1.980 - 1.96) * 120 / df
    lo = max(k for k in _T975 if k < df)
    hi = min(k for k in _T975 if k > df)
    w = (1 / df - 1 / hi) / (1 / lo - 1 / hi)
    return _T975[hi] + w * (_T975[lo] - _T975[hi])


INTERVALS = ("bootstrap", "t")
BOOTSTRAP_RESAMPLES = 4000


def mean_ci(x, method: str = "t") -> tuple[float, float, float]:
    """Mean and 95% interval of x [n] over its non-nan entries (nan bounds when n = 1).

    method "t": Student t (right for a handful of videos); "bootstrap": percentile bootstrap over the entries
    (`BOOTSTRAP_RESAMPLES`, fixed seed, so a table is reproducible), which assumes no normality: for paired
    differences each entry is one (prompt, seed) pair, so pairs are resampled whole."""
    if method not in INTERVALS:
        raise ValueError(f"method must be one of {INTERVALS} (got {method!r})")
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]  # a scorer accuracy is nan for a video where nothing could be judged
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) < 2:
        return float(x.mean()), float("nan"), float("nan")
    if method == "bootstrap":
        means = x[np.random.default_rng(0).integers(0, len(x), (BOOTSTRAP_RESAMPLES, len(x)))].mean(1)
        return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
    half = t_quantile(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def paired_differences(rows: list[dict], a: str, b: str, metric: str) -> np.ndarray:
    """metric(a) - metric(b) over the (prompt, seed) pairs both variants rendered."""
    key = {(r["prompt"], r["seed"]): r[metric] for r in rows if r["variant"] == b}
    return np.array([r[metric] - key[(r["prompt"], r["seed"])] for r in rows
                     if r["variant"] == a and (r["prompt"], r["seed"]) in key])


def _fmt(mean: float, lo: float, hi: float, digits: int = 4) -> str:
    if math.isnan(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def summary_table(rows: list[dict], variants: list[str], interval: str = "t") -> list[str]:
    """Markdown: per variant and metric, mean [95% CI] over videos (`mean_ci`'s `interval` method)."""
    arrow = {1: "↑", -1: "↓"}
    lines = ["| variant | " + " | ".join(f"{m} {arrow[DIRECTION[m]]}" for m in METRICS) + " | frames/s |",
             "|---" * (len(METRICS) + 2) + "|"]
    for v in variants:
        sel = [r for r in rows if r["variant"] == v]
        if not sel:
            continue
        cells = [_fmt(*mean_ci([r[m] for r in sel], interval)) for m in METRICS]
        fps = sum(r["frames"] for r in sel) / sum(r["seconds"] for r in sel)
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {fps:.2f} |")
    return lines


def difference_table(rows: list[dict], pairs: list[tuple[str, str]], interval: str = "t") -> list[str]:
    """Markdown: paired mean difference a - b [95% CI] per metric, whether a is better (CI excludes 0), and in
    how many (prompt, seed) pairs a beats b ("wins k/n"; ties and unjudged pairs count for neither)."""
    lines = ["| comparison | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for a, b in pairs:
        cells = []
        for m in METRICS:
            d = paired_differences(rows, a, b, m)
            if len(d) == 0:
                cells.append("n/a")
                continue
            mean, lo, hi = mean_ci(d, interval)
            wins = f" (wins {int((d * DIRECTION[m] > 0).sum())}/{len(d)})"
            verdict = ""
            if not math.isnan(lo):
                better = lo > 0 if DIRECTION[m] > 0 else hi < 0
                worse = hi < 0 if DIRECTION[m] > 0 else lo > 0
                verdict = " **better**" if better else (" *worse*" if worse else " ~")
            cells.append(_fmt(mean, lo, hi) + verdict + wins)
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return lines


def gap_table(summary: list[dict]) -> list[str]:
    lines = ["| pattern | span (levels) | windows | mixed MSE | matched flat MSE | ratio [95% CI] |",
             "|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['pattern']} | {r['span']} | {r['windows']} | {r['mixed_mse']:.4f} | "
                     f"{r['flat_mse']:.4f} | {_fmt(r['ratio'], r['ratio_lo'], r['ratio_hi'], 3)} |")
    return lines


# ---------------------------------------------------------------- files
def frame_means(rows: list[dict], variants: list[str]) -> list[dict]:
    """Per variant, metric and frame index: the mean over videos."""
    out = []
    for v in variants:
        sel = [r for r in rows if r["variant"] == v]
        for m in SERIES:
            if not sel:
                continue
            mean = np.mean(np.stack([r["series"][m] for r in sel]), 0)
            out += [{"variant": v, "metric": m, "frame": i, "mean": float(x)} for i, x in enumerate(mean)]
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_frames(per_frame: list[dict], variants: list[str], path: Path, smooth: int = 8) -> None:
    """Metric (moving mean over `smooth` frames) vs frame index, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for ax, m in zip(axes.flat, SERIES, strict=True):
        for v in variants:
            y = np.array([r["mean"] for r in per_frame if r["variant"] == v and r["metric"] == m])
            if len(y) == 0:
                continue
            k = min(smooth, len(y))
            ys = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(ys)) + (k - 1) / 2, ys, label=v, lw=1.4)
        ax.set_title(f"{m} ({'higher' if DIRECTION[m] > 0 else 'lower'} is better)")
        ax.set_xlabel("frame index")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gap(summary: list[dict], path: Path) -> None:
    """Error ratio (mixed / matched flat) vs the window's noise span."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for step, marker in ((1, "o"), (2, "s")):
        sel = [r for r in summary if r["step"] == step or r["span"] == 0]
        sel = sorted(sel, key=lambda r: r["span"])
        x = [r["span"] for r in sel]
        y = np.array([r["ratio"] for r in sel])
        err = np.array([[r["ratio"] - r["ratio_lo"], r["ratio_hi"] - r["ratio"]] for r in sel]).T
        ax.errorbar(x, y, yerr=np.nan_to_num(err), marker=marker, capsize=3,
                    label=f"consecutive blocks {step} level{'s' if step > 1 else ''} apart")
        for r in sel:
            ax.annotate(r["pattern"].replace(" x2", ""), (r["span"], r["ratio"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axhline(1, color="gray", lw=0.8)
    ax.set_xlabel("noise span of the window (max - min level)")
    ax.set_ylabel("training MSE: mixed window / same frames in flat windows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_pairs(variants: list[str]) -> list[tuple[str, str]]:
    """(a, b) pairs for the difference table: everything vs FIFO, stream vs offline, each ablation vs MIGA."""
    have = set(variants)
    pairs = [(v, "fifo") for v in variants if v != "fifo"] if "fifo" in have else []
    if "miga" in have and "miga-stream" in have:
        pairs.append(("miga-stream", "miga"))
    pairs += [(v, "miga") for v in variants if v.startswith("miga ") and "miga" in have]
    return list(dict.fromkeys(pairs))


def write_results(out: str | os.PathLike, rows: list[dict], gap_rows: list[dict] | None = None,
                  header: list[str] | None = None, interval: str = "t") -> Path:
    """All files of a study into `out` (intervals by `mean_ci`'s `interval` method); returns the table path."""
    from .gap import summarise_gap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    _write_csv(out / "videos.csv", [{k: v for k, v in r.items() if k != "series"} for r in rows])
    per_frame = frame_means(rows, variants)
    _write_csv(out / "per_frame.csv", per_frame)
    plot_frames(per_frame, [v for v in variants if v in BASIC], out / "metrics_vs_frame.png")
    ablations = [v for v in variants if v.startswith("miga") and v != "miga-stream"]
    if len(ablations) > 2:
        plot_frames(per_frame, ablations, out / "ablations_vs_frame.png")
    lines = list(header or [])
    name = {"t": "t-interval", "bootstrap": f"bootstrap interval, {BOOTSTRAP_RESAMPLES} resamples"}[interval]
    lines += [f"## Means over videos [95% {name}]", "", *summary_table(rows, variants, interval), ""]
    pairs = comparison_pairs(variants)
    if pairs:
        lines += [f"## Paired differences (same prompt and seed) [95% {name}]", "",
                  "**better** / *worse*: the interval excludes 0 in the metric's good / bad direction; ~: it "
                  "does not. Wins: (prompt, seed) pairs where the first is better.", "",
                  *difference_table(rows, pairs, interval), ""]
    if gap_rows:
        summary = summarise_gap(gap_rows)
        _write_csv(out / "gap_rows.csv", gap_rows)
        _write_csv(out / "gap.csv", summary)
        plot_gap(summary, out / "gap_vs_span.png")
        lines += ["## Train-inference gap probe (held-out world clips)", "", *gap_table(summary), ""]
    table = out / "table.md"
    table.write_text("\n".join(lines) + "\n")
    return table


# ---------------------------------------------------------------- `miga-fast eval`
def _command(args, variants: list[Variant]) -> str:
    parts = ["miga-fast eval"] + (["--study"] if args.study else [])
    parts += [f"--seeds {args.seeds}", f"--prompts {args.prompts}", f"--frames {args.frames}", f"--out {args.out}",
              f"--workers {args.workers}", f"--pack {args.pack}", f"--guidance {args.guidance:g}"]
    if args.dtype != "float32":
        parts.append(f"--dtype {args.dtype}")
    if args.model:
        parts.append(f"--model {args.model}")
    if args.variants:
        parts.append(f"--variants '{args.variants}'")
    if args.study:
        parts.append(f"--gap-clips {args.gap_clips}")
    if args.budget_minutes:
        parts.append(f"--budget-minutes {args.budget_minutes:g}")
    parts.append(f"--interval {args.interval}")
    return " ".join(parts)


def run_eval(args) -> int:
    """The `miga-fast eval` command (see cli.py for the arguments)."""
    from ..errors import ConfigError
    from ..models.tiny.bundle import DEFAULT_WEIGHTS

    model = Path(args.model) if args.model else DEFAULT_WEIGHTS
    if not model.is_file():
        raise FileNotFoundError(f"model {model} not found")
    names = args.variants.split(",") if args.variants else (STUDY if args.study else list(BASIC))
    try:
        variants = variants_named([n.strip() for n in names] if names else None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not 1 <= args.prompts <= len(PROMPTS):
        raise ConfigError(f"--prompts must be in [1, {len(PROMPTS)}] (got {args.prompts})")
    if args.seeds < 1 or args.frames < 8:
        raise ConfigError("--seeds must be >= 1 and --frames >= 8 (offline MIGA needs f0 = 8 frames)")
    prompts, seeds = PROMPTS[: args.prompts], list(range(args.seeds))
    videos = len(variants) * len(prompts) * len(seeds)
    if args.speed:
        fps = measure_speed(model, variants, args.frames, args.pack, dtype=args.dtype)
        total = sum(len(prompts) * len(seeds) * args.frames / f for f in fps.values())
        for name, f in fps.items():
            print(f"{name:<20} {f:7.2f} video frames/s ({args.frames} frames, packs of {args.pack}, 2 threads)")
        print(f"projected: {videos} videos, {total / 60:.1f} min")
        return 0
    start = time.perf_counter()
    journal = Path(args.out) / "journal.jsonl"

    def progress(rows, videos_done):
        if not rows:
            print(f"resumed: {videos_done} videos already rendered, from {journal}", flush=True)
            return
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("subject_consistency", "temporal_flickering",
                                                                   "colour_error")}
        print(f"[{videos_done}/{videos}] {rows[0]['variant']:<18} {len(rows)} videos x {rows[0]['frames']} frames "
              f"{rows[0]['seconds'] * len(rows):.0f} s  subj {mean['subject_consistency']:.4f} "
              f"flick {mean['temporal_flickering']:.4f} colour {mean['colour_error']:.3f}  "
              f"({(time.perf_counter() - start) / 60:.1f} min)", flush=True)

    deadline = start + 60 * args.budget_minutes if args.budget_minutes else None
    rows = run_study(model, variants, prompts, seeds, args.frames, guidance=args.guidance, workers=args.workers,
                     pack=args.pack, deadline=deadline, progress=progress, dtype=args.dtype, journal=journal)
    render_minutes = (time.perf_counter() - start) / 60
    rendered = len(rows)
    rows = complete_groups(rows)
    groups = sorted({(r["seed"], PROMPTS.index(r["prompt"])) for r in rows})
    if len(groups) < len(prompts) * len(seeds):
        print(f"budget reached: {len(groups)} of {len(prompts) * len(seeds)} (prompt, seed) groups complete "
              f"({rendered} of {videos} videos rendered); run the same command again to continue", flush=True)
    gap_rows = None
    if args.study and args.gap_clips > 0:
        from ..pipeline import load
        from .gap import probe_gap

        gap_start = time.perf_counter()
        torch.set_num_threads(1)  # tiny windows: extra threads only spin on a shared 2-core box
        gap_rows = probe_gap(load(model).model, clips=args.gap_clips)
        print(f"gap probe: {args.gap_clips} clips in {(time.perf_counter() - gap_start) / 60:.1f} min", flush=True)
    minutes = (time.perf_counter() - start) / 60
    command = _command(args, variants)
    sizes = (f"{len(seeds)} seeds x {len(prompts)} prompts x {args.frames} frames x {len(variants)} variants "
             f"= {videos} videos; rendering {render_minutes:.1f} min, total {minutes:.1f} min "
             f"({args.workers} workers, {os.cpu_count()} CPUs)")
    if len(groups) < len(prompts) * len(seeds):
        sizes += (f". BUDGET CUT at {args.budget_minutes:g} min: only {len(groups)} of {len(prompts) * len(seeds)} "
                  f"(prompt, seed) groups were complete and are reported: (seed, prompt index) {groups}")
    header = ["# Quality study: does MIGA beat FIFO here?", "", f"`{command}`", "", sizes, "",
              "Variants:", "", *[f"- **{v.name}**: {v.note}" for v in variants], ""]
    table = write_results(args.out, rows, gap_rows, header, args.interval)
    readme = Path(args.out) / "README.md"
    if not readme.exists():
        readme.write_text(f"# Quality study results\n\nMade by:\n\n    {command}\n\nwith model `{model}`.\n\n"
                          f"{sizes}.\n\nSee table.md (numbers), metrics_vs_frame.png, gap_vs_span.png; raw rows in "
                          "videos.csv, per_frame.csv, gap.csv, gap_rows.csv. Metric definitions and how they differ "
                          "from VBench: miga_fast/quality/metrics.py.\n")
    print(f"{sizes}\nwrote {table}")
    return 0
