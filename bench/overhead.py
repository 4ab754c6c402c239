"""Engine overhead: a provider's time per model call minus the denoiser-only time of the same calls, replayed.

For each mode and provider (engine "eager" / "compile", and the baseline loop of bench/baseline_loop.py):
  1. one recording run wraps the denoiser to count its calls and record their input shapes, in order (the first
     input of each shape is kept for the replay); the compile engine runs exactly the calls of the eager engine
     (batching is decided before the mode), so its calls are recorded on an eager engine;
  2. the provider runs unwrapped: ``--warmup`` untimed runs (compile), then the median of ``--repeats`` timed runs;
  3. the recorded call sequence is replayed on the bare denoiser, same shapes, same order: eager for the eager
     engine and the baseline, ``torch.compile``'d (warmed on every shape first) for the compile engine; median of
     ``--repeats``;
  4. overhead = run time - denoiser time, per call and as a fraction of the run time (planner, gathers, keyed
     noise, solver steps, CFG combine, ring writes, Python). Runs and replays alternate (pairs), so a drifting
     machine load hits both alike; the fraction is the median over the pairs.

Also ``denoiser_in_run_ms``: the denoiser's own time measured inside the eager recording run (a cross-check of
the replay). And ``engine_only_ms``: the provider run with a free denoiser (it returns one cached prediction per
shape), the provider's own work with nothing else in the caches; ``engine_only_fraction`` sets it against the
denoiser floor. It is the low-noise figure: run - replay is a difference of two runs ~30x larger than it, so its
spread across repeats is of the order of the overhead itself. The base clip is sampled once, outside every timing.
Writes ``<out-dir>/overhead.csv``.

    python bench/overhead.py --quick
    python bench/overhead.py --modes fifo,miga,miga-stream --frames 32 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from baseline_loop import for_engine  # noqa: E402
from common import RESULTS, machine, write_csv  # noqa: E402
from fps_memory import DTYPES, MODES, PROMPT, QUICK_STEPS, load_generator  # noqa: E402

PROVIDERS = ("baseline", "eager", "compile")


class Recorder:
    """Wraps a denoiser: counts calls, records each call's shapes in order, keeps one input per shape."""

    def __init__(self, fn, sync=lambda: None):
        self.fn, self.sync, self.sequence, self.samples, self.seconds = fn, sync, [], {}, 0.0

    def __call__(self, x, t, cond):
        key = (tuple(x.shape), tuple(t.shape), tuple(cond.shape))
        self.sequence.append(key)
        if key not in self.samples:
            self.samples[key] = (x.clone(), t.clone(), cond.clone())
        self.sync()
        start = time.perf_counter()
        out = self.fn(x, t, cond)
        self.sync()
        self.seconds += time.perf_counter() - start
        return out


class FreeDenoiser:
    """A denoiser that costs nothing: one cached prediction per input shape (drawn once, so the solver sees
    finite values)."""

    def __init__(self):
        self.outputs: dict[tuple, torch.Tensor] = {}

    def __call__(self, x, t, cond):
        out = self.outputs.get(tuple(x.shape))
        if out is None:
            out = self.outputs[tuple(x.shape)] = torch.randn_like(x)
        return out


def replay(fn, rec: Recorder, sync) -> float:
    """Seconds to call `fn` on the recorded sequence of shapes (sample inputs), in order."""
    start = time.perf_counter()
    for key in rec.sequence:
        fn(*rec.samples[key])
    sync()
    return time.perf_counter() - start


def measure(mode: str, provider: str, args) -> dict:
    from miga_fast.runtime.factory import make_engine

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    gen, weights = load_generator(args.resolution, dtype, args.device, False)
    steps = args.steps if args.steps is not None else (QUICK_STEPS[mode] if args.quick else None)
    cfg = gen.config(mode, steps=steps)
    cond, uncond = gen.encode(PROMPT), gen.encode("")
    shape = (3, args.resolution, args.resolution)
    denoise = gen.model.denoise
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def engine(fn, mode_):
        return make_engine(gen.bundle, cfg, denoise=fn, latent_shape=shape, cond=cond, uncond=uncond,
                           guidance_scale=args.guidance, seed=0, device=device, dtype=dtype,
                           window_batch=args.window_batch, mode=mode_)

    reference = engine(denoise, "eager")
    n = args.frames
    with torch.no_grad():
        base = reference.sample_base()
        rec = Recorder(denoise, sync)
        if provider == "baseline":
            for _ in for_engine(reference, rec, base, cond=cond, uncond=uncond).run_plan(cfg, n):
                pass
        else:
            for _ in engine(rec, "eager").run(n, base=base):
                pass
        sync()
        in_run = rec.seconds

        def provider_run(fn):
            if provider == "baseline":
                def run():
                    for _ in for_engine(reference, fn, base, cond=cond, uncond=uncond).run_plan(cfg, n):
                        pass
            else:
                eng = engine(fn, provider)

                def run():
                    for _ in eng.run(n, base=base):
                        pass
            return run

        run, run_free = provider_run(denoise), provider_run(FreeDenoiser())

        def timed(fn):
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start

        floor_fn, floor = denoise, "eager denoiser"
        if provider == "compile":
            floor_fn, floor = torch.compile(denoise, fullgraph=True, dynamic=False), "compiled denoiser"
            for key in rec.samples:  # compile every shape before timing
                floor_fn(*rec.samples[key])
        for _ in range(args.warmup):
            run()
        replay(floor_fn, rec, sync)
        # Interleaved (run, replay) pairs, so a drifting machine load hits both alike; medians over the pairs.
        pairs = [(timed(run), replay(floor_fn, rec, sync)) for _ in range(args.repeats)]
        run_s = statistics.median(r for r, _ in pairs)
        den_s = statistics.median(d for _, d in pairs)
        frac = statistics.median((r - d) / r for r, d in pairs)
        for _ in range(args.warmup):
            run_free()
        free_s = statistics.median(timed(run_free) for _ in range(args.repeats))
    calls = len(rec.sequence)
    over = run_s - den_s
    shapes = "; ".join(f"{c}x x{list(k[0])}" for k, c in Counter(rec.sequence).items())
    return {
        "mode": mode, "provider": provider, "window_batch": args.window_batch, "resolution": args.resolution,
        "dtype": args.dtype, "frames": n, "steps": cfg.num_steps, "weights": weights, "device": str(device),
        "calls": calls, "calls_per_frame": calls / n, "run_ms": run_s * 1e3, "denoiser_ms": den_s * 1e3,
        "denoiser_in_run_ms": in_run * 1e3 if provider != "compile" else None, "overhead_ms": over * 1e3,
        "overhead_fraction": frac, "engine_only_ms": free_s * 1e3,
        "engine_only_fraction": free_s / (free_s + den_s), "run_ms_per_call": run_s * 1e3 / calls,
        "denoiser_ms_per_call": den_s * 1e3 / calls, "overhead_ms_per_call": over * 1e3 / calls,
        "engine_only_ms_per_call": free_s * 1e3 / calls, "floor": floor,
        "repeats": args.repeats, "shapes": shapes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: fifo + miga-stream, 8 frames, 2 repeats, eager")
    p.add_argument("--modes", default=None, help=f"comma list of {MODES} (default all; --quick fifo,miga-stream)")
    p.add_argument("--providers", default=None,
                   help=f"comma list of {PROVIDERS} (default all; --quick baseline,eager)")
    p.add_argument("--frames", type=int, default=None, help="output frames per run (default 32; --quick 8)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps T (default: the preset's)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs / replays (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--window-batch", type=int, default=0)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=None, help="default bench/results (--quick bench/results/quick)")
    args = p.parse_args(argv)
    q = args.quick
    modes = (args.modes or ("fifo,miga-stream" if q else ",".join(MODES))).split(",")
    providers = (args.providers or ("baseline,eager" if q else ",".join(PROVIDERS))).split(",")
    args.frames = args.frames or (8 if q else 32)
    args.repeats = args.repeats or (2 if q else 5)
    out_dir = args.out_dir or (RESULTS / "quick" if q else RESULTS)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(
        ["miga-fast", "bench", "overhead", *argv])
    info = machine()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"# {command}\n# {info['cpu']} ({info['threads']} threads), torch {info['torch']}")
    rows = []
    for mode in modes:
        for provider in providers:
            r = measure(mode, provider, args)
            rows.append({**r, "command": command, "timestamp": stamp, **info})
            print(f"{mode:12s} {provider:9s} {r['calls']:5d} calls  run {r['run_ms_per_call']:8.3f} ms/call  "
                  f"denoiser {r['denoiser_ms_per_call']:8.3f} ms/call ({r['floor']})  "
                  f"overhead {r['overhead_ms_per_call']:7.3f} ms/call = {100 * r['overhead_fraction']:5.1f}%  "
                  f"engine only {r['engine_only_ms_per_call']:6.3f} ms/call = {100 * r['engine_only_fraction']:4.1f}%")
    print(f"# wrote {write_csv(out_dir / 'overhead.csv', rows, '.4g')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
