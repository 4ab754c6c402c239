"""End-to-end benchmark: frames/s versus peak memory of FIFO / MIGA / miga-stream, engine against the baseline loop.

Sweeps mode x engine (eager / compile / graph; graph needs CUDA and is reported as skipped, with the reason,
elsewhere) x window batch x resolution x dtype x frames. Each configuration (by default in a fresh subprocess, so
peak memory and compile time are its own) samples one base clip (shared by every provider, not timed), runs
``--warmup`` untimed runs (the first one compiles / captures: reported as ``first_run_s``, ``compile_s``,
``setup_s``), then ``--repeats`` timed runs of N output frames each, and reports medians:

  * ``fps_diffusion``: frames / (run time - decode time), the engine (or baseline) alone;
  * ``fps_e2e``: frames / run time including decode (identity for the pixel-space bundled model) and the uint8
    conversion + host copy of every frame, as ``VideoGenerator.stream`` does;
  * ``model_calls_per_frame`` (denoiser invocations; the baseline makes two per window with CFG) and
    ``windows_per_frame``;
  * memory: ``rss_peak_mb`` (sampled every 10 ms during the timed runs), ``rss_delta_mb`` (over the RSS at the start
    of the run), ``maxrss_mb`` (process lifetime), ``cuda_max_allocated_mb`` on CUDA, NVML GPU memory / power /
    energy per frame / SM clock when NVML loads; ``peak_mem_mb`` is the CUDA allocator peak on CUDA, else the RSS
    peak, and is the x axis of the plot;
  * the baseline loop (bench/baseline_loop.py: official-style eager loop, same events, same noise) in the same run,
    and every engine row's ratios against it: ``speedup_vs_baseline``, ``e2e_speedup_vs_baseline``,
    ``mem_vs_baseline``.

Writes ``<out-dir>/fps_memory.csv`` (machine and versions in every row, and the exact command) and
``fps_memory.png`` (frames/s vs peak memory, one point per configuration, Pareto front marked; needs matplotlib).

    python bench/fps_memory.py --quick                          # smoke test: seconds
    python bench/fps_memory.py --engines eager,compile --frames 32 --repeats 5
    python bench/fps_memory.py --resolutions 32,64 --dtypes float32,bfloat16 --window-batch 0,1
    miga-fast bench fps ...                                     # the same, from the CLI
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from baseline_loop import for_engine  # noqa: E402
from common import RESULTS, machine  # noqa: E402

from miga_fast import telemetry  # noqa: E402
from miga_fast.plan import MODES  # noqa: E402

ENGINES = ("baseline", "eager", "compile", "graph")
QUICK_STEPS = {"fifo": 8, "miga": 10, "miga-stream": 10}  # --quick: fewer sampler steps than the presets' 16
PROMPT = "a red circle moving left on a striped blue background"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COLUMNS = [
    "mode", "engine", "window_batch", "resolution", "dtype", "frames", "steps", "weights", "device", "status",
    "fps_diffusion", "fps_e2e", "ms_per_frame_diffusion", "ms_per_frame_e2e", "fps_diffusion_p20",
    "fps_diffusion_p80", "runs", "warmup_runs", "model_calls_per_frame", "windows_per_frame",
    "speedup_vs_baseline", "e2e_speedup_vs_baseline", "peak_mem_mb", "mem_vs_baseline", "pareto",
    "rss_peak_mb", "rss_delta_mb", "maxrss_mb", "cuda_max_allocated_mb", "cuda_max_reserved_mb", "gpu_mem_peak_mb",
    "power_mean_w", "energy_j_per_frame", "sm_clock_mean_mhz", "nvml", "first_run_s", "compile_s", "setup_s",
    "first_video_s", "later_video_s", "first_video_first_frame_s", "later_video_first_frame_s",
    "later_videos_compile_s", "command", "timestamp",
]


@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration of the sweep."""

    mode: str
    engine: str  # baseline | eager | compile | graph
    window_batch: int  # engine window batch (0: a whole group per call); the baseline runs windows one by one
    resolution: int
    dtype: str
    frames: int
    steps: int | None  # sampler steps T (None: the preset's)


def pareto_front(points: list[tuple[float | None, float | None]]) -> list[bool]:
    """For (memory, fps) points: True where no other point has memory <= and fps >= with one of them strict.

    Lower memory and higher frames/s are better; points with a missing value are never on the front; equal points
    are all on it."""
    out = []
    for i, (m, f) in enumerate(points):
        if m is None or f is None:
            out.append(False)
            continue
        dominated = any(j != i and mj is not None and fj is not None and mj <= m and fj >= f and (mj < m or fj > f)
                        for j, (mj, fj) in enumerate(points))
        out.append(not dominated)
    return out


# ---------------------------------------------------------------------------------------------------- one point
def load_generator(resolution: int, dtype: torch.dtype, device: str, random_weights: bool):
    """The bundled model at its 32x32, or a random-init WanDiT of the same configuration at `resolution`
    (bundled text encoder)."""
    from miga_fast.models.tiny.bundle import TinyVideoModel
    from miga_fast.pipeline import VideoGenerator

    bundled = TinyVideoModel.load()
    patch = bundled.spec.dit["patch_size"][1]
    if resolution % patch:
        raise ValueError(f"resolution must be a multiple of the DiT patch size {patch} (got {resolution})")
    if resolution == bundled.spec.frame_size and not random_weights:
        model, weights = bundled, "bundled"
    else:
        torch.manual_seed(0)
        model = TinyVideoModel(dataclasses.replace(bundled.spec, frame_size=resolution))
        model.text.load_state_dict(bundled.text.state_dict())
        weights = "random-init"
    return VideoGenerator(model, device=device, dtype=dtype), weights


def _frame(latent: torch.Tensor):
    """Decode (identity: pixel space) + uint8 conversion + host copy, as VideoGenerator.stream."""
    return ((latent.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def skip_reason(point: Point, device: torch.device) -> str | None:
    """Why `point` cannot run on `device` (the engine's own reason for graph mode), or None."""
    if point.engine != "graph":
        return None
    from miga_fast.runtime.graph import unavailable_reason

    return unavailable_reason(device)


def measure(point: Point, opts: dict) -> dict:
    """Run one configuration; returns a row (without the ratio / Pareto columns)."""
    from miga_fast.runtime.factory import make_engine

    device = torch.device(opts["device"])
    row = {**dataclasses.asdict(point), "device": str(device), "status": "ok"}
    reason = skip_reason(point, device)
    if reason:
        row["status"] = f"skipped: {reason}"
        return row
    dtype = DTYPES[point.dtype]
    gen, row["weights"] = load_generator(point.resolution, dtype, opts["device"], opts["random_weights"])
    steps = point.steps if point.steps is not None else (QUICK_STEPS[point.mode] if opts["quick"] else None)
    cfg = gen.config(point.mode, steps=steps)
    row["steps"] = cfg.num_steps
    cond, uncond = gen.encode(opts["prompt"]), gen.encode("")
    shape = (3, point.resolution, point.resolution)
    common = dict(cond=cond, uncond=uncond, guidance_scale=opts["guidance"], seed=opts["seed"], device=device,
                  dtype=dtype)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    reference = make_engine(gen.bundle, cfg, latent_shape=shape, **common)
    with torch.no_grad():
        base = reference.sample_base()  # shared by every provider and run; not timed
    engine = None
    if point.engine != "baseline":  # one long-lived engine: every run is a new video in its buffers and code
        engine = make_engine(gen.bundle, cfg, latent_shape=shape, window_batch=point.window_batch,
                             mode=point.engine, **common)
    first_frame: list[float] = []  # per run: seconds from its start to its first output latent
    compiled_after: list[float] = []  # per run: compile seconds summed over step kinds, after the run

    def one_run() -> tuple[dict, float, int, int]:
        start = time.perf_counter()
        if engine is not None:
            engine.reset(opts["seed"], cond, uncond)
            calls0, windows0 = engine.stats.model_calls, engine.stats.windows
            outputs = engine.run(point.frames, base=base)
        else:
            loop = for_engine(reference, gen.model.denoise, base, cond=cond, uncond=uncond)
            outputs = loop.run_plan(cfg, point.frames)
        decode = 0.0
        with telemetry.Monitor(device, interval=opts["interval"]) as mon, torch.no_grad():
            for i, latent in enumerate(outputs):
                sync()
                t0 = time.perf_counter()
                if i == 0:
                    first_frame.append(t0 - start)
                _frame(latent)
                decode += time.perf_counter() - t0
        if engine is not None:
            calls, windows = engine.stats.model_calls - calls0, engine.stats.windows - windows0
        else:
            calls, windows = loop.model_calls, loop.windows
        compiled_after.append(sum(getattr(getattr(engine, "runner", None), "compile_seconds", {}).values()))
        return mon.result, decode, calls, windows

    first = None
    for i in range(opts["warmup"]):
        result = one_run()[0]
        first = result["wall_s"] if i == 0 else first
    runs = [one_run() for _ in range(opts["repeats"])]
    n = point.frames
    walls = [r["wall_s"] for r, _, _, _ in runs]
    fps_d = [n / max(r["wall_s"] - dec, 1e-9) for r, dec, _, _ in runs]
    fps_e = [n / r["wall_s"] for r in (x[0] for x in runs)]

    def q(values, k):
        return statistics.quantiles(values, n=10, method="inclusive")[k] if len(values) > 1 else values[0]

    def peak(key):
        vals = [r[key] for r, _, _, _ in runs if r.get(key) is not None]
        return max(vals) if vals else None

    last = runs[-1][0]
    row.update(
        fps_diffusion=statistics.median(fps_d), fps_e2e=statistics.median(fps_e),
        fps_diffusion_p20=q(fps_d, 1), fps_diffusion_p80=q(fps_d, 7), runs=len(runs), warmup_runs=opts["warmup"],
        model_calls_per_frame=runs[-1][2] / n, windows_per_frame=runs[-1][3] / n,
        rss_peak_mb=peak("rss_peak_mb"), maxrss_mb=last["maxrss_mb"],
        rss_delta_mb=max((r["rss_peak_mb"] or 0) - (r["rss_start_mb"] or 0) for r, _, _, _ in runs),
        cuda_max_allocated_mb=peak("cuda_max_allocated_mb"), cuda_max_reserved_mb=peak("cuda_max_reserved_mb"),
        gpu_mem_peak_mb=peak("gpu_mem_peak_mb"), power_mean_w=last["power_mean_w"], nvml=last["nvml"],
        sm_clock_mean_mhz=last["sm_clock_mean_mhz"],
        energy_j_per_frame=None if last["energy_j"] is None else statistics.median(
            r["energy_j"] / n for r, _, _, _ in runs if r["energy_j"] is not None),
        first_run_s=first,
    )
    row["ms_per_frame_diffusion"] = 1e3 / row["fps_diffusion"]
    row["ms_per_frame_e2e"] = 1e3 / row["fps_e2e"]
    row["peak_mem_mb"] = row["cuda_max_allocated_mb"] if device.type == "cuda" else row["rss_peak_mb"]
    if first is not None:  # what the first run costs more than a steady one: compile / capture / allocator warm-up
        row["setup_s"] = first - statistics.median(walls)
    if engine is not None and getattr(engine.runner, "compile_seconds", None) and engine.mode == "compile":
        row["compile_s"] = sum(engine.runner.compile_seconds.values())  # per step kind: compile + its first step
    # The long-lived engine: the first video pays allocation + compile / capture, later ones start at once.
    row["first_video_s"], row["later_video_s"] = first, statistics.median(walls)
    row["first_video_first_frame_s"] = first_frame[0]
    row["later_video_first_frame_s"] = statistics.median(first_frame[1:]) if len(first_frame) > 1 else None
    row["later_videos_compile_s"] = compiled_after[-1] - compiled_after[0]  # 0: nothing compiled after video 1
    return row


# ---------------------------------------------------------------------------------------------------- the sweep
def points(args) -> list[Point]:
    out = []
    for mode in args.modes:
        for res in args.resolutions:
            for dt in args.dtypes:
                for n in args.frames:
                    for eng in args.engines:
                        for wb in (args.window_batch if eng != "baseline" else [0]):
                            out.append(Point(mode, eng, wb, res, dt, n, args.steps))
    return out


def run_isolated(point: Point, opts: dict, warm_cache: bool) -> dict:
    """measure() in a fresh interpreter: its own peak RSS, its own (cold unless --warm-cache) compile caches."""
    env = dict(os.environ)
    if not warm_cache:
        env["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    job = json.dumps({"point": dataclasses.asdict(point), "opts": opts})
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", job], env=env,
                          capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**dataclasses.asdict(point), "device": opts["device"], "status": f"error: {tail}"}


def attach_ratios(rows: list[dict]) -> None:
    """Ratios of every engine row against the baseline row of the same mode / resolution / dtype / frames / steps;
    the Pareto flag over all measured rows."""
    def key(r):
        return (r["mode"], r["resolution"], r["dtype"], r["frames"], r.get("steps"), r.get("weights"), r["device"])

    base = {key(r): r for r in rows if r["engine"] == "baseline" and r["status"] == "ok"}
    for r in rows:
        b = base.get(key(r))
        if r["status"] != "ok" or b is None:
            continue
        r["speedup_vs_baseline"] = r["fps_diffusion"] / b["fps_diffusion"]
        r["e2e_speedup_vs_baseline"] = r["fps_e2e"] / b["fps_e2e"]
        if r.get("peak_mem_mb") and b.get("peak_mem_mb"):
            r["mem_vs_baseline"] = r["peak_mem_mb"] / b["peak_mem_mb"]
    ok = [r for r in rows if r["status"] == "ok"]
    for r, on in zip(ok, pareto_front([(r.get("peak_mem_mb"), r.get("fps_diffusion")) for r in ok]), strict=True):
        r["pareto"] = on


def label(r: dict) -> str:
    wb = "" if r["engine"] == "baseline" else f" wb{r['window_batch']}"
    return f"{r['mode']} {r['engine']}{wb} {r['resolution']}px {r['dtype']} N{r['frames']}"


def write_csv(rows: list[dict], path: Path, extra: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = COLUMNS + [k for k in extra if k not in COLUMNS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(v) for k, v in {**extra, **r}.items()})


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return v


def plot(rows: list[dict], path: Path, title: str, command: str) -> bool:
    """frames/s (diffusion only) vs peak memory, one point per measured configuration, Pareto front marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not installed (pip install 'miga_fast[plots]'): no plot")
        return False
    ok = [r for r in rows if r["status"] == "ok" and r.get("peak_mem_mb") is not None]
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = {"baseline": "tab:gray", "eager": "tab:blue", "compile": "tab:orange", "graph": "tab:green"}
    markers = {"fifo": "s", "miga": "^", "miga-stream": "o"}
    seen = set()
    for r in ok:
        lab = f"{r['engine']} / {r['mode']}"
        ax.scatter(r["peak_mem_mb"], r["fps_diffusion"], c=colors.get(r["engine"], "k"),
                   marker=markers.get(r["mode"], "x"), s=50, label=None if lab in seen else lab, zorder=3)
        seen.add(lab)
        ax.annotate(label(r), (r["peak_mem_mb"], r["fps_diffusion"]), fontsize=6, xytext=(4, 3),
                    textcoords="offset points")
    front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r["peak_mem_mb"])
    if front:
        ax.scatter([r["peak_mem_mb"] for r in front], [r["fps_diffusion"] for r in front], s=180, facecolors="none",
                   edgecolors="red", linewidths=1.5, label="Pareto front", zorder=4)
        ax.step([r["peak_mem_mb"] for r in front], [r["fps_diffusion"] for r in front], where="post", color="red",
                lw=1, alpha=0.6, zorder=2)
    ax.set_xlabel("peak memory (MB): " + ("CUDA max allocated" if any(r["device"].startswith("cuda") for r in ok)
                                          else "process RSS, sampled"))
    ax.set_ylabel("frames/s (diffusion only, median)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ok:
        ax.legend(fontsize=7, loc="best")
    fig.text(0.01, 0.005, command[:220], fontsize=5, family="monospace")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def csv_of(kind, choices=None):
        def parse(text):
            items = [kind(x) for x in text.split(",") if x.strip()]
            if choices is not None:
                bad = [x for x in items if x not in choices]
                if bad:
                    raise argparse.ArgumentTypeError(f"{bad} not in {list(choices)}")
            return items
        return parse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: frames 8, repeats 2, fewer steps, eager (+ graph row), in-process")
    p.add_argument("--modes", type=csv_of(str, MODES), default=list(MODES))
    p.add_argument("--engines", type=csv_of(str, ENGINES), default=None,
                   help="comma list of baseline,eager,compile,graph (default: all; --quick: baseline,eager,graph)")
    p.add_argument("--window-batch", type=csv_of(int), default=[0], help="engine windows per call (0: whole group)")
    p.add_argument("--resolutions", type=csv_of(int), default=[32],
                   help="frame sizes; 32 runs the bundled weights, others a random-init WanDiT of the same config")
    p.add_argument("--random-weights", action="store_true", help="random-init weights at 32 too")
    p.add_argument("--dtypes", type=csv_of(str, DTYPES), default=["float32"])
    p.add_argument("--frames", type=csv_of(int), default=None,
                   help="output frames per run (default 32; --quick 8; miga needs >= 8)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps T (default: the preset's 16)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (the first one compiles / captures)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--interval", type=float, default=0.01, help="memory sampling period (s)")
    iso = p.add_mutually_exclusive_group()
    iso.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                     help="one fresh process per configuration (default, except --quick)")
    iso.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument("--warm-cache", action="store_true", help="isolated runs keep inductor's on-disk caches")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where fps_memory.csv / .png go (default bench/results, --quick bench/results/quick)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.engines = args.engines or (["baseline", "eager", "graph"] if q else list(ENGINES))
    args.frames = args.frames or ([8] if q else [32])
    args.repeats = args.repeats or (2 if q else 5)
    args.isolate = (not q) if args.isolate is None else args.isolate
    args.out_dir = args.out_dir or (RESULTS / "quick" if q else RESULTS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:  # one configuration, in a subprocess of the sweep
        job = json.loads(args.worker)
        if job["opts"].get("threads"):
            torch.set_num_threads(job["opts"]["threads"])
        row = measure(Point(**job["point"]), job["opts"])
        print("RESULT " + json.dumps(row))
        return 0
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(
        ["miga-fast", "bench", "fps", *argv])
    opts = dict(device=args.device, random_weights=args.random_weights, quick=args.quick, guidance=args.guidance,
                seed=args.seed, prompt=args.prompt, warmup=args.warmup, repeats=args.repeats, interval=args.interval,
                threads=args.threads)
    info = {**machine(), **telemetry.environment(args.device)}
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"# {command}\n# {info['cpu']} ({info['threads']} threads), gpu {info['gpu']}, torch {info['torch']}, "
          f"nvml {info['nvml']}; {'isolated processes' if args.isolate else 'in-process'}")
    rows = []
    for point in points(args):
        t0 = time.perf_counter()
        if args.isolate and not skip_reason(point, torch.device(args.device)):
            row = run_isolated(point, opts, args.warm_cache)
        else:
            try:
                row = measure(point, opts)
            except Exception as exc:  # one configuration failing must not lose the others
                row = {**dataclasses.asdict(point), "device": args.device,
                       "status": f"error: {type(exc).__name__}: {exc}"}
        rows.append(row)
        if row["status"] == "ok":
            print(f"{label(row):48s} {row['fps_diffusion']:8.2f} frames/s diffusion {row['fps_e2e']:8.2f} e2e  "
                  f"peak {row['peak_mem_mb'] or float('nan'):8.1f} MB  calls/frame {row['model_calls_per_frame']:6.2f}"
                  f"  ({time.perf_counter() - t0:.0f} s)")
        else:
            print(f"{label(row):48s} {row['status']}")
    attach_ratios(rows)
    for r in rows:
        if r.get("speedup_vs_baseline") is not None and r["engine"] != "baseline":
            mem = f", memory x{r['mem_vs_baseline']:.2f}" if r.get("mem_vs_baseline") else ""
            print(f"{label(r):48s} x{r['speedup_vs_baseline']:.2f} vs baseline "
                  f"(e2e x{r['e2e_speedup_vs_baseline']:.2f}){mem}")
    extra = {"command": command, "timestamp": stamp, **info}
    csv_path, png_path = args.out_dir / "fps_memory.csv", args.out_dir / "fps_memory.png"
    write_csv(rows, csv_path, extra)
    print(f"# wrote {csv_path}")
    title = (f"frames/s vs peak memory: {info['cpu']}, {info['threads']} threads, gpu {info['gpu']}, "
             f"torch {info['torch']}\nmedian of {args.repeats} runs after {args.warmup} warm-up; red: Pareto front")
    if plot(rows, png_path, title, command):
        print(f"# wrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
