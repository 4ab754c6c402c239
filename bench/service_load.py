"""Bounded load test of `miga-fast serve` on loopback: C concurrent clients submit J small jobs in all, each
client streams its job's frames (ndjson) and waits for it; a 429 is retried after its Retry-After, as a client
should. Reports jobs lost (accepted but not completed with every frame), 429s, p50 / p95 latency from submit to
the first streamed frame and to completion, and throughput (jobs/s, frames/s), into results/service/load.csv.

    python bench/service_load.py                       # 50 clients, 200 jobs x 16 frames, tiny random 8x8 model
    python bench/service_load.py --model default       # the bundled model (32x32; about 10x slower per frame)
    python bench/service_load.py --quick               # 5 clients, 10 jobs

One render worker serves every client (one model, one device), so the latency to the first frame is mostly time
spent queued behind other jobs: it grows with clients / throughput, which is what this measures.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for path in (str(BENCH), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

from common import RESULTS, machine  # noqa: E402

from miga_fast.client import ServiceError  # noqa: E402
from tests.service.conftest import Server  # noqa: E402

PROMPTS = ("a red circle moving left on a striped blue background",
           "a green square moving up on a dotted white background")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--model", default=None, help="a model path or 'default' (bundled); default: tiny random 8x8")
    p.add_argument("--max-queue", type=int, default=32)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.clients, args.jobs = 5, 10
    command = "python bench/service_load.py " + shlex.join(sys.argv[1:])
    print(command)
    tmp = Path(tempfile.mkdtemp(prefix="miga-load-"))
    model = args.model
    if model is None:
        from tests.render.conftest import save_tiny

        model = save_tiny(tmp / "tiny.safetensors")
    server = Server(model, tmp / "state", "--max-queue", str(args.max_queue)).start()
    lock, todo = threading.Lock(), list(range(args.jobs))
    results, errors, rejected = [], [], [0]

    def client_loop():
        client = server.client()
        client.timeout = 600
        while True:
            with lock:
                if not todo:
                    return
                n = todo.pop()
            t0 = time.perf_counter()
            while True:
                try:
                    job = client.create(prompt=PROMPTS[n % 2], frames=args.frames, seed=n)
                    break
                except ServiceError as err:
                    if err.status != 429:
                        errors.append(f"job {n}: {err}")
                        return
                    with lock:
                        rejected[0] += 1
                    time.sleep(1.0)
            first, count = None, 0
            for _ in client.frames(job["id"]):
                count += 1
                if first is None:
                    first = time.perf_counter() - t0
            done = client.wait(job["id"])
            with lock:
                results.append({"id": job["id"], "status": done["status"], "frames": count, "first_frame_s": first,
                                "total_s": time.perf_counter() - t0})

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server.stop()
    ok = [r for r in results if r["status"] == "completed" and r["frames"] == args.frames]
    lost = args.jobs - len(ok)
    first = [r["first_frame_s"] for r in ok]
    total = [r["total_s"] for r in ok]
    row = {"clients": args.clients, "jobs": args.jobs, "frames_per_job": args.frames,
           "model": "tiny random 8x8" if args.model is None else args.model, "completed": len(ok), "lost": lost,
           "errors": len(errors), "rejected_429": rejected[0], "wall_s": round(wall, 2),
           "jobs_per_s": round(len(ok) / wall, 3), "frames_per_s": round(len(ok) * args.frames / wall, 2),
           "first_frame_p50_s": round(statistics.median(first), 3),
           "first_frame_p95_s": round(percentile(first, .95), 3),
           "done_p50_s": round(statistics.median(total), 3), "done_p95_s": round(percentile(total, .95), 3),
           "command": command, **machine()}
    out = RESULTS / ("quick" if args.quick else "service")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "load.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    for key in ("completed", "lost", "errors", "rejected_429", "wall_s", "jobs_per_s", "frames_per_s",
                "first_frame_p50_s", "first_frame_p95_s", "done_p50_s", "done_p95_s"):
        print(f"{key}: {row[key]}")
    print("\n".join(errors[:5]))
    print(f"wrote {out / 'load.csv'}")
    sys.exit(1 if lost or errors else 0)


if __name__ == "__main__":
    main()
