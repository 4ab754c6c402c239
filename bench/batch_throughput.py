"""Batch throughput: videos/hour and frames/s of `miga_fast.batch.run` for 1 vs 2 workers and pack 1 vs 4, in one run.

Each configuration renders the same job file (``--jobs`` videos of ``--frames`` frames, the bundled model,
miga-stream, distinct seeds) into a fresh folder; configurations are interleaved over ``--repeats`` rounds and the
median wall time is reported, with its ratio to the baseline (1 worker, pack 1) of the same run. Wall time is the
whole `run` call (model load, worker start-up, every video written), what a user of `miga-fast batch` waits;
``startup_s`` (model load + worker start-up: wall time minus the sum of the per-unit seconds the manifest gives,
per worker) is reported apart. The cores are shared out: 1 worker uses every core's thread, 2 workers one each.

    python bench/batch_throughput.py                  # 8 jobs x 24 frames, 2 rounds: ~8 min on 2 cores
    python bench/batch_throughput.py --quick          # 2 jobs x 8 frames: a smoke run (results/quick/)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from common import RESULTS, machine, write_csv  # noqa: E402

from miga_fast import batch  # noqa: E402

CONFIGS = [(1, 1), (2, 1), (1, 4), (2, 4)]  # (workers, pack); the first is the baseline
PROMPTS = ("a red circle moving left on a striped blue background",
           "a green square moving up on a dotted white background")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.jobs, args.frames, args.repeats = 2, 8, 1
    out_dir = RESULTS / ("quick" if args.quick else "batch")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python bench/batch_throughput.py " + shlex.join(sys.argv[1:])
    print(command)
    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="miga-batch-bench-"))
    jobs = root / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"id": f"v{i}", "prompt": PROMPTS[i % 2], "frames": args.frames, "seed": i})
                            + "\n" for i in range(args.jobs)))
    walls = {c: [] for c in CONFIGS}
    startups = {c: [] for c in CONFIGS}
    try:
        for rnd in range(args.repeats):
            for workers, pack in CONFIGS:
                out = root / f"out-{workers}-{pack}-{rnd}"
                t0 = time.perf_counter()
                rows = batch.run(jobs, out, workers=workers, pack=pack, threads=max(1, cores // workers),
                                 progress=False)
                wall = time.perf_counter() - t0
                assert all(r["status"] == "done" for r in rows), rows
                walls[workers, pack].append(wall)
                startups[workers, pack].append(wall - sum(r["seconds"] for r in rows) / workers)
                print(f"round {rnd}: workers {workers} pack {pack}: {wall:.1f} s", flush=True)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(walls[CONFIGS[0]])
    info = machine()
    rows = []
    for workers, pack in CONFIGS:
        wall = statistics.median(walls[workers, pack])
        rows.append({"workers": workers, "pack": pack, "threads_per_worker": max(1, cores // workers),
                     "jobs": args.jobs, "frames_per_job": args.frames, "wall_s": round(wall, 2),
                     "startup_s": round(statistics.median(startups[workers, pack]), 2),
                     "videos_per_hour": round(args.jobs * 3600 / wall, 1),
                     "frames_per_s": round(args.jobs * args.frames / wall, 3),
                     "speedup_vs_1_worker_pack_1": round(base / wall, 3), "repeats": args.repeats,
                     "walls_s": " ".join(f"{w:.2f}" for w in walls[workers, pack]), "command": command, **info})
    path = write_csv(out_dir / "batch_throughput.csv", rows)
    for r in rows:
        print(f"workers {r['workers']} pack {r['pack']}: {r['videos_per_hour']} videos/h, {r['frames_per_s']} "
              f"frames/s, x{r['speedup_vs_1_worker_pack_1']} (start-up {r['startup_s']} s)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
