"""The quality study: same prompts and seeds through FIFO, MIGA, miga-stream and MIGA ablations.

    miga-fast eval --study --seeds 10 --prompts 4 --frames 512 --out bench/results/quality

Writes `videos.csv` (one row per rendered video), `per_frame.csv` (metric means per frame index),
`gap.csv` / `gap_rows.csv` (train-inference gap probe), `table.md` (means with 95% t-intervals over videos,
paired differences against FIFO, miga-stream against miga and each ablation against MIGA) and PNG plots.

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

from .metrics import DIRECTION, all_metrics


@dataclass(frozen=True)
class Variant:
    """A named schedule: a pipeline mode plus PlanConfig overrides."""

    name: str
    mode: str
    overrides: dict = field(default_factory=dict, hash=False)
    note: str = ""


VARIANTS: list[Variant] = [
    Variant("fifo", "fifo", note="FIFO-Diffusion with lookahead (tiny-fifo)"),
    Variant("miga", "miga", note="official offline MIGA (tiny-miga: L_zig=2, m=2, reflection off)"),
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
BASIC = ("fifo", "miga", "miga-stream")

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
           "colour_error", "area_error", "area_cv", "count_ok")


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


def _generator(model_path: str, threads: int):
    if model_path not in _GEN:
        from ..pipeline import load

        torch.set_num_threads(threads)
        _GEN[model_path] = load(model_path)
    return _GEN[model_path]


FINISHED = " +L0"  # suffix of the rows with the missing level-0 step added (`finish_level0`)


@torch.no_grad()
def render_latents(gen, prompt: str, frames: int, mode: str, seed: int, guidance: float = 4.0,
                   overrides: dict | None = None):
    """Output latents [N, C, H, W] exactly as `VideoGenerator.stream` computes them, and the solver.

    Same construction as `stream` (single prompt), stopping before the uint8 conversion so the
    diagnostic `finish_level0` can see the latents; `to_uint8` of the result equals `stream`'s frames.
    """
    from ..runtime import Engine
    from ..solvers import make_solver

    cfg = gen.config(mode, overrides=overrides)
    solver = make_solver(cfg.solver, cfg.num_steps, shift=gen.model.spec.shift)
    engine = Engine(gen.model.denoise, solver, cfg, (3, gen.frame_size, gen.frame_size), cond=gen.encode(prompt),
                    uncond=gen.encode(""), guidance_scale=guidance, seed=seed, device=gen.device, dtype=gen.dtype)
    return torch.stack(list(engine.run(frames))), solver


def to_uint8(latents: torch.Tensor) -> np.ndarray:
    """Latents [N, 3, H, W] in [-1, 1] -> uint8 frames [N, H, W, 3] (the pipeline's conversion)."""
    return ((latents.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def finish_level0(gen, latents: torch.Tensor, prompt: str, solver, guidance: float = 4.0) -> torch.Tensor:
    """Diagnostic: the level-0 step the tiny MIGA presets never take. [N, C, H, W] -> same shape.

    MIGA's schedule comes from VideoCrafter2, where the level-0 DDIM step is an identity, so MIGA's
    last call is at level 1 and its latents are emitted AT level 0. With a flow solver level 0 is
    sigma_0 = 0.167 (T=16, shift 3), not clean: the step to sigma 0 is ``x0 = x - sigma_0 v``. We take it
    in f0-frame windows with every frame at level 0 (the training condition), CFG as in rendering.
    """
    f0, n = gen.model.spec.window, len(latents)
    w = min(f0, n)
    starts = sorted(set(range(0, n - w + 1, w)) | {n - w})  # last window right-aligned
    out = latents.clone()
    zero = torch.zeros(1, w, dtype=torch.long)
    t = solver.model_timesteps(zero.flatten()).view(1, w).to(latents.dtype).repeat(2, 1)
    cond = torch.cat([gen.encode(prompt), gen.encode("")])
    covered = 0
    for s in starts:
        x = latents[s : s + w].permute(1, 0, 2, 3)[None]  # [1, C, F, H, W]
        c, u = gen.model.denoise(x.expand(2, *x.shape[1:]), t, cond).chunk(2)
        v = (u + guidance * (c - u))[0].permute(1, 0, 2, 3)
        new = max(s, covered)  # the right-aligned tail window only writes frames not yet finished
        out[new : s + w] = latents[new : s + w] - solver.sigmas[0] * v[new - s :]
        covered = s + w
    return out


def render_and_score(model_path: str, variant: Variant, prompt: str, seed: int, frames: int,
                     guidance: float = 4.0, threads: int = 1) -> list[dict]:
    """Render one video and score it: rows of scores plus `series` (per-frame arrays). MIGA variants
    give a second row (name + " +L0") scored after `finish_level0`, from the same latents."""
    gen = _generator(model_path, threads)
    start = time.perf_counter()
    latents, solver = render_latents(gen, prompt, frames, variant.mode, seed, guidance, variant.overrides)
    seconds = time.perf_counter() - start
    videos = [(variant.name, latents)]
    if variant.mode != "fifo":
        videos.append((variant.name + FINISHED, finish_level0(gen, latents, prompt, solver, guidance)))
    rows = []
    for name, lat in videos:
        scores = all_metrics(to_uint8(lat), prompt)
        rows.append({"variant": name, "prompt": prompt, "seed": seed, "frames": frames, "seconds": seconds,
                     **{k: scores[k][0] for k in METRICS}, "series": {k: scores[k][1] for k in SERIES}})
    return rows


def run_study(model_path: str | os.PathLike, variants: list[Variant], prompts: list[str], seeds: Iterable[int],
              frames: int, *, guidance: float = 4.0, workers: int = 1, deadline: float | None = None,
              progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Every (variant, prompt, seed), `workers` processes with one torch thread each (windows are small:
    two single-thread processes beat one two-thread process on 2 cores).

    Tasks run seed by seed, prompt by prompt (all variants of a pair together); past `deadline`
    (time.perf_counter) no new task starts, so a cut-off study loses whole (prompt, seed) groups
    last-first (`complete_groups` drops the partial ones). Rows in task order.
    """
    tasks = [(v, p, s) for s in seeds for p in prompts for v in variants]
    model_path = str(model_path)

    def late():
        return deadline is not None and time.perf_counter() > deadline

    if workers <= 1:
        rows = []
        for v, p, s in tasks:
            if late():
                break
            rows += render_and_score(model_path, v, p, s, frames, guidance, threads=torch.get_num_threads())
            if progress:
                progress(rows[-1])
        return rows
    # within a group, slowest first (reflection, offline MIGA) so the pool drains evenly
    order = sorted(range(len(tasks)), key=lambda i: (i // len(variants), tasks[i][0].name != "miga + reflection",
                                                      tasks[i][0].mode != "miga"))
    done: list[list[dict]] = [[] for _ in tasks]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(render_and_score, model_path, *tasks[i], frames, guidance, 1): i for i in order}
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            done[futures[fut]] = fut.result()
            if progress:
                progress(done[futures[fut]][0])
            if late():
                for f in futures:
                    f.cancel()  # only tasks not yet started; running ones finish
    return [r for rows in done for r in rows]


def complete_groups(rows: list[dict]) -> list[dict]:
    """Only the (prompt, seed) groups every variant rendered, so all variants average the same videos."""
    names = set(r["variant"] for r in rows)
    have: dict[tuple, set] = {}
    for r in rows:
        have.setdefault((r["prompt"], r["seed"]), set()).add(r["variant"])
    return [r for r in rows if have[(r["prompt"], r["seed"])] == names]


def measure_speed(model_path: str | os.PathLike, variants: list[Variant], frames: int = 64,
                  prompt: str = PROMPTS[0], threads: int = 1) -> dict[str, float]:
    """Frames per second of each variant (one video, `threads` torch threads, model already loaded)."""
    gen = _generator(str(model_path), threads)
    torch.set_num_threads(threads)
    out = {}
    for v in variants:
        start = time.perf_counter()
        for _ in gen.stream(prompt, frames, mode=v.mode, seed=0, overrides=v.overrides):
            pass
        out[v.name] = frames / (time.perf_counter() - start)
    return out


# ---------------------------------------------------------------- statistics
# Two-sided 95% Student t quantiles t_{0.975}(df); few videos per cell, so a normal or bootstrap
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


def mean_ci(x) -> tuple[float, float, float]:
    """Mean and 95% t-interval of x [n] (nan bounds when n = 1)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()), float("nan"), float("nan")
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


def summary_table(rows: list[dict], variants: list[str]) -> list[str]:
    """Markdown: per variant and metric, mean [95% CI] over videos."""
    arrow = {1: "↑", -1: "↓"}
    lines = ["| variant | " + " | ".join(f"{m} {arrow[DIRECTION[m]]}" for m in METRICS) + " | frames/s |",
             "|---" * (len(METRICS) + 2) + "|"]
    for v in variants:
        sel = [r for r in rows if r["variant"] == v]
        if not sel:
            continue
        cells = [_fmt(*mean_ci([r[m] for r in sel])) for m in METRICS]
        fps = sum(r["frames"] for r in sel) / sum(r["seconds"] for r in sel)
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {fps:.2f} |")
    return lines


def difference_table(rows: list[dict], pairs: list[tuple[str, str]]) -> list[str]:
    """Markdown: paired mean difference a - b [95% CI] per metric, and whether a is better (CI excludes 0)."""
    lines = ["| comparison | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for a, b in pairs:
        cells = []
        for m in METRICS:
            d = paired_differences(rows, a, b, m)
            if len(d) == 0:
                cells.append("n/a")
                continue
            mean, lo, hi = mean_ci(d)
            verdict = ""
            if not math.isnan(lo):
                better = lo > 0 if DIRECTION[m] > 0 else hi < 0
                worse = hi < 0 if DIRECTION[m] > 0 else lo > 0
                verdict = " **better**" if better else (" *worse*" if worse else " ~")
            cells.append(_fmt(mean, lo, hi) + verdict)
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
            ax.plot(np.arange(len(ys)) + (k - 1) / 2, ys, "--" if v.endswith(FINISHED) else "-", label=v, lw=1.4)
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
    ax.set_ylabel("flow MSE: mixed window / same frames in flat windows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_pairs(variants: list[str]) -> list[tuple[str, str]]:
    """(a, b) pairs for the difference table: everything vs FIFO, stream vs offline, each ablation vs
    official MIGA (raw vs raw, +L0 vs +L0) and the missing level-0 step's own effect."""
    have = set(variants)
    pairs = [(v, "fifo") for v in variants if v != "fifo"] if "fifo" in have else []
    for sfx in ("", FINISHED):
        if "miga" + sfx in have and "miga-stream" + sfx in have:
            pairs.append(("miga-stream" + sfx, "miga" + sfx))
    for v in variants:
        if v.startswith("miga ") and not v.startswith("miga +L0"):
            base = "miga" + (FINISHED if v.endswith(FINISHED) else "")
            if base in have:
                pairs.append((v, base))
        if v.endswith(FINISHED) and v[: -len(FINISHED)] in have:
            pairs.append((v, v[: -len(FINISHED)]))
    return list(dict.fromkeys(pairs))


def write_results(out: str | os.PathLike, rows: list[dict], gap_rows: list[dict] | None = None,
                  header: list[str] | None = None) -> Path:
    """All files of a study into `out`; returns the table path."""
    from .gap import summarise_gap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    _write_csv(out / "videos.csv", [{k: v for k, v in r.items() if k != "series"} for r in rows])
    per_frame = frame_means(rows, variants)
    _write_csv(out / "per_frame.csv", per_frame)
    main_modes = [v for v in variants if v.replace(FINISHED, "") in BASIC]
    plot_frames(per_frame, main_modes, out / "metrics_vs_frame.png")
    ablations = [v for v in variants if v.startswith("miga") and v.replace(FINISHED, "") not in BASIC[2:]]
    if len(ablations) > 2:
        plot_frames(per_frame, [v for v in ablations if not v.endswith(FINISHED)], out / "ablations_vs_frame.png")
        plot_frames(per_frame, [v for v in ablations if v.endswith(FINISHED)], out / "ablations_L0_vs_frame.png")
    lines = list(header or [])
    lines += ["## Means over videos [95% t-interval]", "", *summary_table(rows, variants), ""]
    pairs = comparison_pairs(variants)
    if pairs:
        lines += ["## Paired differences (same prompt and seed) [95% t-interval]", "",
                  "**better** / *worse*: the interval excludes 0 in the metric's good / bad direction; ~: it "
                  "does not.", "", *difference_table(rows, pairs), ""]
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
              f"--workers {args.workers}", f"--guidance {args.guidance:g}"]
    if args.model:
        parts.append(f"--model {args.model}")
    if args.variants:
        parts.append(f"--variants '{args.variants}'")
    if args.study:
        parts.append(f"--gap-clips {args.gap_clips}")
    if args.budget_minutes:
        parts.append(f"--budget-minutes {args.budget_minutes:g}")
    return " ".join(parts)


def run_eval(args) -> int:
    """The `miga-fast eval` command (see cli.py for the arguments)."""
    from ..errors import ConfigError
    from ..models.tiny.bundle import DEFAULT_WEIGHTS

    model = Path(args.model) if args.model else DEFAULT_WEIGHTS
    if not model.is_file():
        raise FileNotFoundError(f"model {model} not found")
    names = args.variants.split(",") if args.variants else (None if args.study else list(BASIC))
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
        fps = measure_speed(model, variants, args.frames)
        total = sum(len(prompts) * len(seeds) * args.frames / f for f in fps.values())
        for name, f in fps.items():
            print(f"{name:<20} {f:7.2f} frames/s (1 thread, {args.frames} frames)")
        print(f"projected: {videos} videos, {total / 60:.1f} min on 1 thread, "
              f"~{total / 60 / max(args.workers, 1):.1f} min with {args.workers} workers")
        return 0
    start = time.perf_counter()
    done = [0]

    def progress(row):
        done[0] += 1
        print(f"[{done[0]}/{videos}] {row['variant']:<18} seed {row['seed']} {row['frames']} frames "
              f"{row['seconds']:.0f} s  subj {row['subject_consistency']:.4f} flick {row['temporal_flickering']:.4f} "
              f"colour {row['colour_error']:.3f}  ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)

    deadline = start + 60 * args.budget_minutes if args.budget_minutes else None
    rows = run_study(model, variants, prompts, seeds, args.frames, guidance=args.guidance, workers=args.workers,
                     deadline=deadline, progress=progress)
    render_minutes = (time.perf_counter() - start) / 60
    rendered = len({(r["prompt"], r["seed"], r["variant"]) for r in rows if FINISHED not in r["variant"]})
    rows = complete_groups(rows)
    groups = sorted({(r["seed"], PROMPTS.index(r["prompt"])) for r in rows})
    if len(groups) < len(prompts) * len(seeds):
        print(f"budget reached: {len(groups)} of {len(prompts) * len(seeds)} (prompt, seed) groups complete "
              f"({rendered} of {videos} videos rendered)", flush=True)
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
              "Variants:", "", *[f"- **{v.name}**: {v.note}" for v in variants],
              f"- **<name>{FINISHED}**: the same latents after `finish_level0`, the level-0 step (sigma 0.167 -> 0) "
              "the VC2-derived MIGA schedule never takes; a diagnostic, not an official setting", ""]
    table = write_results(args.out, rows, gap_rows, header)
    readme = Path(args.out) / "README.md"
    if not readme.exists():
        readme.write_text(f"# Quality study results\n\nMade by:\n\n    {command}\n\nwith model `{model}`.\n\n"
                          f"{sizes}.\n\nSee table.md (numbers), metrics_vs_frame.png, gap_vs_span.png; raw rows in "
                          "videos.csv, per_frame.csv, gap.csv, gap_rows.csv. Metric definitions and how they differ "
                          "from VBench: miga_fast/quality/metrics.py.\n")
    print(f"{sizes}\nwrote {table}")
    return 0
