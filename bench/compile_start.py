"""Compiled-engine start-up: cold vs warm compile caches, each in a fresh process, against eager in the same run.

Each row is one fresh interpreter that loads the bundled model and streams N frames of the README prompt:

  * ``cold``: compile mode with an empty inductor cache directory (what a first run on a machine pays);
  * ``warm``: compile mode again on the cache the cold run filled (every later process: the on-disk FX-graph and
    AOT-autograd caches give back compiled code, dynamo still traces);
  * ``eager``: the baseline, no compile.

Reported per row: ``import_s`` (torch + miga_fast + model load), ``first_frame_s`` (stream start to first frame:
includes every step kind's compile in compile mode), ``total_s`` (stream start to last frame), ``steady_fps``
(over the second half of the frames: step kinds first used after the first frame compile then too),
``compile_s`` (the engine's `compile_seconds`: first call of each step kind, compile included), ``maxrss_mb``.
Then the break-even frame count at which compile (cold or warm) beats eager end to end:
``(compile_total - eager_total - frames * (1/fps_eager - 1/fps_compile)) / (1/fps_eager - 1/fps_compile)`` more
frames than the measured run, i.e. the frames N at which both totals are equal.

    python bench/compile_start.py [--frames 64] [--mode miga-stream] [--threads 2]

Writes ``bench/results/compile_start.csv``; run alone on the machine (timings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

PROMPT = "a red circle moving left on a striped blue background"


def worker(engine_mode: str, frames: int, mode: str) -> dict:
    """Runs in the fresh process: times import, first frame and the rest."""
    t0 = time.perf_counter()
    import resource

    import miga_fast

    gen = miga_fast.load_default()
    t1 = time.perf_counter()
    stamps = []
    for _ in gen.stream(PROMPT, frames, mode=mode, engine_mode=engine_mode):
        stamps.append(time.perf_counter())
    engine = gen.engines[0]
    compile_s = sum(getattr(engine.runner, "compile_seconds", {}).values())
    half = len(stamps) // 2  # the second half: step kinds first used after the first frame compile too
    steady = (len(stamps) - 1 - half) / (stamps[-1] - stamps[half]) if len(stamps) > 2 else float("nan")
    return {"import_s": t1 - t0, "first_frame_s": stamps[0] - t1, "total_s": stamps[-1] - t1,
            "steady_fps": steady, "compile_s": compile_s,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_fresh(engine_mode: str, frames: int, mode: str, threads: int, cache_dir: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "OMP_NUM_THREADS": str(threads)}
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps([engine_mode, frames, mode])]
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT "):]), "process_s": wall}
    raise RuntimeError(f"{engine_mode} run failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")


def break_even(compile_row: dict, eager_row: dict) -> float:
    """Frames after which the compiled run has caught up with eager (inf when it never does)."""
    saved = 1 / eager_row["steady_fps"] - 1 / compile_row["steady_fps"]  # seconds per frame, steady state
    if saved <= 0:
        return float("inf")
    # totals as fixed cost + frames / steady fps: N where they meet
    fixed = {n: r["total_s"] - r["frames"] / r["steady_fps"] for n, r in (("c", compile_row), ("e", eager_row))}
    return max((fixed["c"] - fixed["e"]) / saved, 0.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--mode", default="miga-stream")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=BENCH / "results" / "compile_start.csv")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(*json.loads(args.worker))))
        return 0
    from common import machine, write_csv

    rows = []
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        for label, engine_mode in (("eager", "eager"), ("cold", "compile"), ("warm", "compile")):
            r = run_fresh(engine_mode, args.frames, args.mode, args.threads, cache)
            rows.append({"run": label, "engine": engine_mode, "mode": args.mode, "frames": args.frames,
                         "threads": args.threads, **r})
            print(f"{label:5s}: import {r['import_s']:.1f} s, first frame {r['first_frame_s']:.1f} s, total "
                  f"{r['total_s']:.1f} s, steady {r['steady_fps']:.2f} frames/s, compile {r['compile_s']:.1f} s, "
                  f"max RSS {r['maxrss_mb']:.0f} MB", flush=True)
    eager = rows[0]
    for r in rows[1:]:
        r["break_even_frames"] = break_even(r, eager)
        print(f"{r['run']}: compile beats eager end to end after {r['break_even_frames']:.0f} frames")
    info = machine()
    write_csv(args.out, [{**r, **info, "command": " ".join(sys.argv)} for r in rows])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
