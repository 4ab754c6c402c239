"""Soak test: a long miga-stream run must keep memory flat and every frame finite.

Generates ``--latents`` output latents (default 10,000) in one engine run and, every ``--every`` latents, records
RSS now and its sampled peak since the last checkpoint (a 10 ms sampler thread), CUDA allocated memory on CUDA,
frames/s over the interval and overall, and whether every latent so far was finite. Verdicts (printed as PASS /
FAIL lines; exit status 1 on any FAIL):
  * memory flat: after the warm-up (the first ``--warmup-fraction`` of the latents), the largest interval peak of the
    last quarter of the checkpoints exceeds that of the first quarter by at most ``--tolerance-mb`` (RSS; the CUDA
    allocator's on CUDA); the least-squares slope (MB per 1,000 latents) is reported too;
  * no NaN/Inf in any latent (the engine also stops with an error on a non-finite denoiser output).

Writes ``<out-dir>/soak.csv`` (one row per checkpoint), ``soak_summary.csv`` and ``soak.png`` (memory and frames/s
over the run).

    python bench/soak.py --quick                                 # toy model, 300 latents: seconds
    python bench/soak.py --model toy --latents 10000             # minutes
    python bench/soak.py --model bundled --latents 10000         # the bundled model: ~40 min on 2 CPU cores
    python bench/soak.py --kill-every 1000 --latents 10000       # fault mode: killed and resumed (soak_faults.py)
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from common import RESULTS, machine, write_csv  # noqa: E402

from miga_fast import telemetry  # noqa: E402
from miga_fast.runtime import Engine, EngineError  # noqa: E402
from miga_fast.solvers import solver_for  # noqa: E402

PROMPT = "a red circle moving left on a striped blue background"


def build(args):
    """(denoise, solver, cfg, latent shape, cond, uncond, guidance) for --model."""
    if args.model == "toy":
        from miga_fast.models.toy import ToyDenoiser
        from miga_fast.plan import preset

        model = ToyDenoiser(channels=4, cond_dim=8).eval().to(args.device)
        cfg = preset(f"tiny-{args.mode}", **({"num_steps": args.steps} if args.steps else {}))
        g = torch.Generator().manual_seed(1)
        cond, uncond = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g) * 0.1
        return model, solver_for(cfg), cfg, (4, 16, 16), cond, uncond
    import miga_fast

    gen = miga_fast.load_default(args.device)
    cfg = gen.config(args.mode, steps=args.steps)
    solver = solver_for(cfg, gen.bundle.shift)
    return (gen.model.denoise, solver, cfg, (3, gen.frame_size, gen.frame_size), gen.encode(PROMPT),
            gen.encode(""))


def verdicts(rows: list[dict], n: int, warmup_fraction: float, tolerance_mb: float, key: str) -> dict:
    """Memory flatness and finiteness from the checkpoint rows."""
    post = [r for r in rows if r["latents"] > warmup_fraction * n] or rows
    if len(post) == len(rows) and len(rows) > 1:
        post = rows[1:]  # always leave out the first checkpoint (allocator and caches settle)
    q = max(1, len(post) // 4)
    first, last = max(r[key] for r in post[:q]), max(r[key] for r in post[-q:])
    xs = [r["latents"] for r in post]
    ys = [r[key] for r in post]
    slope = 0.0
    if len(xs) > 1:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 1000 if var else 0.0
    finite = all(r["finite"] for r in rows) and (not rows or rows[-1]["latents"] == n)
    return {"memory_metric": key, "first_quarter_max_mb": first, "last_quarter_max_mb": last,
            "growth_mb": last - first, "slope_mb_per_1000": slope, "tolerance_mb": tolerance_mb,
            "memory_flat": "PASS" if last - first <= tolerance_mb else "FAIL",
            "no_nan": "PASS" if finite else "FAIL", "checkpoints_used": len(post)}


def plot(rows: list[dict], summary: dict, path: Path, title: str, command: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not installed (pip install 'miga_fast[plots]'): no plot")
        return False
    x = [r["latents"] for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    key = summary["memory_metric"]
    a.plot(x, [r["rss_mb"] for r in rows], lw=1, label="RSS at checkpoint")
    a.plot(x, [r["rss_peak_interval_mb"] for r in rows], lw=1, label="RSS peak in interval")
    if key == "cuda_allocated_mb":
        a.plot(x, [r["cuda_allocated_mb"] for r in rows], lw=1, label="CUDA allocated")
    a.axvspan(0, summary["warmup_latents"], color="gray", alpha=0.15, label="warm-up (not judged)")
    a.set_ylabel("MB")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    a.set_title(f"{title}\nmemory flat: {summary['memory_flat']} (growth {summary['growth_mb']:+.2f} MB, tolerance "
                f"{summary['tolerance_mb']} MB, slope {summary['slope_mb_per_1000']:+.3f} MB/1000), "
                f"no NaN: {summary['no_nan']}", fontsize=8)
    b.plot(x, [r["fps_interval"] for r in rows], lw=1, label="frames/s (interval)")
    b.plot(x, [r["fps_cumulative"] for r in rows], lw=1, label="frames/s (cumulative)")
    b.set_xlabel("output latents")
    b.set_ylabel("frames/s")
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    fig.text(0.01, 0.005, command[:220], fontsize=5, family="monospace")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy model, 300 latents, a checkpoint every 20")
    p.add_argument("--latents", type=int, default=None, help="output latents (default 10000; --quick 300)")
    p.add_argument("--every", type=int, default=None, help="checkpoint period in latents (default 100; --quick 20)")
    p.add_argument("--model", choices=["bundled", "toy"], default=None, help="default bundled (--quick: toy)")
    p.add_argument("--mode", default="miga-stream", choices=["fifo", "miga-stream"],
                   help="a constant-memory mode (offline miga holds every latent by design)")
    p.add_argument("--engine", default="eager", choices=["eager", "compile", "graph"])
    p.add_argument("--steps", type=int, default=None, help="sampler steps T (default: the preset's)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--window-batch", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance-mb", type=float, default=4.0, help="allowed last-quarter over first-quarter growth")
    p.add_argument("--warmup-fraction", type=float, default=0.1, help="leading share of the run not judged")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=None, help="default bench/results (--quick bench/results/quick)")
    p.add_argument("--kill-every", type=int, default=0, metavar="K", help="fault mode (bench/soak_faults.py): a "
                   "resumable render of --latents frames killed every K frames, vs uninterrupted")
    p.add_argument("--checkpoint-every", type=int, default=100, help="fault mode: frames between checkpoints")
    args = p.parse_args(argv)
    q = args.quick
    if args.kill_every:
        import soak_faults

        args.latents = args.latents or 10000
        return soak_faults.run(args, args.out_dir or RESULTS / "faults")
    args.latents = args.latents or (300 if q else 10000)
    args.every = args.every or (20 if q else 100)
    args.model = args.model or ("toy" if q else "bundled")
    out_dir = args.out_dir or (RESULTS / "quick" if q else RESULTS)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(
        ["miga-fast", "bench", "soak", *argv])
    info = machine()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"# {command}\n# {info['cpu']} ({info['threads']} threads), gpu {info['gpu']}, torch {info['torch']}")
    device = torch.device(args.device)
    denoise, solver, cfg, shape, cond, uncond = build(args)
    engine = Engine(denoise, solver, cfg, shape, cond=cond, uncond=uncond, guidance_scale=args.guidance,
                    seed=args.seed, device=device, dtype=torch.float32, window_batch=args.window_batch,
                    mode=args.engine)
    cuda = device.type == "cuda"
    rows: list[dict] = []
    finite = torch.ones((), dtype=torch.bool, device=device)
    error = None
    start = last_t = time.perf_counter()
    last_n = 0
    with telemetry.Monitor(device) as mon, torch.no_grad():
        mon.take_peak()
        try:
            for i, latent in enumerate(engine.run(args.latents)):
                finite &= torch.isfinite(latent).all()
                done = i + 1
                if done % args.every == 0 or done == args.latents:
                    ok = bool(finite)  # one host sync per checkpoint
                    now = time.perf_counter()
                    rows.append({
                        "latents": done, "elapsed_s": now - start,
                        "fps_interval": (done - last_n) / max(now - last_t, 1e-9),
                        "fps_cumulative": done / (now - start),
                        "rss_mb": (telemetry.rss_bytes() or 0) / telemetry.MB,
                        "rss_peak_interval_mb": mon.take_peak() / telemetry.MB,
                        "cuda_allocated_mb": torch.cuda.memory_allocated(device) / telemetry.MB if cuda else None,
                        "finite": ok,
                    })
                    last_t, last_n = now, done
                    r = rows[-1]
                    print(f"{done:7d} latents  {r['elapsed_s']:8.1f} s  {r['fps_interval']:7.2f} frames/s "
                          f"(overall {r['fps_cumulative']:7.2f})  RSS {r['rss_mb']:8.1f} MB "
                          f"(peak {r['rss_peak_interval_mb']:8.1f})  finite {ok}", flush=True)
        except EngineError as exc:  # the engine stops on a non-finite denoiser output
            error = str(exc)
            rows.append({"latents": last_n, "elapsed_s": time.perf_counter() - start, "fps_interval": 0.0,
                         "fps_cumulative": 0.0, "rss_mb": (telemetry.rss_bytes() or 0) / telemetry.MB,
                         "rss_peak_interval_mb": mon.take_peak() / telemetry.MB,
                         "cuda_allocated_mb": None, "finite": False})
    key = "cuda_allocated_mb" if cuda else "rss_peak_interval_mb"
    summary = verdicts(rows, args.latents, args.warmup_fraction, args.tolerance_mb, key)
    summary["warmup_latents"] = int(args.warmup_fraction * args.latents)
    common = {"mode": cfg.mode, "model": args.model, "engine": engine.mode, "steps": cfg.num_steps,
              "command": command, "timestamp": stamp, **info}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "soak.csv", [{**r, **common} for r in rows], ".6g")
    total = rows[-1]["elapsed_s"] if rows else 0.0
    write_csv(out_dir / "soak_summary.csv", [{"latents": args.latents, "seconds": total,
                                              "fps": rows[-1]["fps_cumulative"] if rows else 0.0,
                                              "error": error or "", **summary, **common}], ".6g")
    print(f"memory flat: {summary['memory_flat']}  ({key}: first-quarter max {summary['first_quarter_max_mb']:.2f} "
          f"MB, last-quarter max {summary['last_quarter_max_mb']:.2f} MB, growth {summary['growth_mb']:+.2f} MB, "
          f"tolerance {args.tolerance_mb} MB; slope {summary['slope_mb_per_1000']:+.3f} MB per 1000 latents)")
    print(f"no NaN: {summary['no_nan']}" + (f"  ({error})" if error else ""))
    title = (f"soak: {cfg.mode}, {args.model} model, engine {engine.mode}, {args.latents} latents; "
             f"{info['cpu']}, torch {info['torch']}")
    written = [out_dir / "soak.csv", out_dir / "soak_summary.csv"]
    if plot(rows, summary, out_dir / "soak.png", title, command):
        written.append(out_dir / "soak.png")
    print("# wrote " + ", ".join(map(str, written)))
    passed = summary["memory_flat"] == "PASS" and summary["no_nan"] == "PASS"
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
