"""Batch rendering: a job file in, one video per job out, resumable, on one or many workers.

    rows = miga_fast.batch.run("jobs.jsonl", "out/", workers=2)          # or miga-fast batch jobs.jsonl -o out/

Every job is validated before anything renders (`jobs.py`). Each video goes to `OUTDIR/<id>.mp4` through the
resumable render (`render.py`: checkpoints and segments in `OUTDIR/<id>.mp4.ckpt/`, the file written by an
atomic rename at the end). `OUTDIR/manifest.jsonl` gets one line per finished or failed job (status, seconds,
frames/s, peak memory, plan config, weights hash, the job's digest); it is written by the parent process only.
A rerun skips every job whose video is finished, resumes half-finished ones from their checkpoints and renders the
rest: no job is rendered twice, no finished video is overwritten. Jobs sharing a model and plan group run in a row
on a worker, so its long-lived engine serves them all (`VideoGenerator` keeps idle engines per configuration).

Workers (`batch_worker.py` is what each runs): `workers=1` renders in this process; `workers=N` in N local
processes (spawned; a process that dies has its job re-queued, resumed from its checkpoint); `ray="local" |
ADDRESS` on Ray (`batch_ray.py`, `pip install -e ".[ray]"`): one actor per worker, each holding the model, jobs
dispatched as workers free up, a dead actor replaced and its job re-queued. `pack=V` renders up to V jobs of a
group and length in one engine run (for launch-bound devices): each packed video gets the keyed noise its own
render would draw, so it equals that render up to float rounding of the wider batch; a pack has no checkpoints
(a killed pack renders again), and jobs with self-reflection or a prompt schedule render alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .batch_worker import claim_device, render_jobs, worker_devices, worker_generator
from .errors import ConfigError, RenderError, require
from .jobs import Job, JobFileError, check_jobs, read_jobs

MANIFEST = "manifest.jsonl"


# ---------------------------------------------------------------- the batch
def _manifest(outdir: Path) -> dict[str, dict]:
    """The last manifest row of every job id so far."""
    rows = {}
    path = outdir / MANIFEST
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-append: that job is simply looked at again
                continue
            if isinstance(row, dict) and "id" in row:
                rows[row["id"]] = row
    return rows


def _append(outdir: Path, row: dict) -> None:
    with open(outdir / MANIFEST, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def plan_units(jobs: list[Job], pack: int, packable: Callable[[Job], bool] = lambda job: True) -> list[list[Job]]:
    """Jobs ordered by group (one engine serves a group in a row), cut into packs of up to `pack` jobs of equal
    length among those `packable` says may share a run (the rest render alone, resumably)."""
    units, by_group = [], {}
    for job in jobs:
        by_group.setdefault(job.group(), []).append(job)
    for group in by_group.values():
        same_length: dict[int, list[Job]] = {}
        for job in group:
            if pack > 1 and packable(job):
                same_length.setdefault(job.args.get("frames", 256), []).append(job)
            else:
                units.append([job])
        for same in same_length.values():
            units += [same[i:i + pack] for i in range(0, len(same), pack)]
    return units


def _packable(gen, outdir: Path):
    """A job may share a packed run unless its plan has self-reflection (a pack takes one reflection decision
    for all its videos), it switches prompts (prompt_schedule), or its video is already on disk (a pack would
    render it again; alone, the resumable render sees it is complete)."""
    def packable(job: Job) -> bool:
        return ("prompt_schedule" not in job.args and not (outdir / f"{job.id}.mp4").exists()
                and not gen.config(job.args.get("mode", "miga-stream"), job.args.get("steps")).reflection)
    return packable


class BatchInterrupted(Exception):
    """A render of the batch stopped on SIGINT / SIGTERM with a checkpoint; the same call again goes on."""


def run(jobs: str | os.PathLike | list[Job], outdir: str | os.PathLike, *, model: str | None = None,
        device: str = "cpu", workers: int = 1, pack: int = 1, ray: str | None = None, fail_fast: bool = False,
        skip_invalid: bool = False, checkpoint_every: int | None = None, threads: int | None = None,
        progress: bool = True, on_start: Callable[[list[str], int | None], None] | None = None) -> list[dict]:
    """Render a job file (or a list of `Job`) into `outdir`; returns the manifest rows of its jobs (those finished
    by an earlier run: their old rows). workers: local processes (or Ray actors with `ray`: "local" starts a Ray
    on this machine, else a cluster address); pack: videos per engine run; threads: torch threads per worker
    (default: the cores shared out). on_start(job ids, worker pid or None) is called as a unit starts."""
    require(isinstance(workers, int) and workers >= 1, "workers", "an integer >= 1", workers)
    require(isinstance(pack, int) and pack >= 1, "pack", "an integer >= 1", pack)
    require(checkpoint_every is None or (isinstance(checkpoint_every, int) and checkpoint_every >= 0),
            "checkpoint_every", "an integer >= 0 (frames; 0: no checkpoints)", checkpoint_every)
    outdir = Path(outdir)
    if isinstance(jobs, list):
        source, job_list, bad = "jobs", jobs, []
    else:
        source, (job_list, bad) = str(jobs), read_jobs(jobs, skip_invalid=True)
    gen = worker_generator(model, device, None)  # the model validates every job before anything renders
    bad = sorted(bad + check_jobs(gen, job_list))
    if bad and not skip_invalid:
        raise JobFileError(source, bad)
    bad_lines = {line for line, _ in bad}
    job_list = [j for j in job_list if j.line not in bad_lines]
    outdir.mkdir(parents=True, exist_ok=True)
    old = _manifest(outdir)
    for job in job_list:
        prev = old.get(job.id)
        if prev and prev.get("digest") != job.digest():
            raise ConfigError(f"{source}:{job.line}: job {job.id!r} was rendered into {outdir} with other "
                              "arguments; give the changed job a new id (or another output folder)")
    finished = {j.id for j in job_list
                if old.get(j.id, {}).get("status") == "done" and (outdir / f"{j.id}.mp4").exists()}
    todo = [j for j in job_list if j.id not in finished]
    units = plan_units(todo, pack, _packable(gen, outdir))
    if threads is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    view = _Progress(len(job_list), len(finished), progress)
    rows = {j.id: old[j.id] for j in job_list if j.id in finished}
    stopped = []

    def record(unit_rows: list[dict]) -> bool:
        """Append a unit's rows; False: stop dispatching (an interrupted render, or --fail-fast)."""
        for row in unit_rows:
            _append(outdir, row)
            rows[row["id"]] = row
            view.finish(row)
            if row["status"] == "interrupted":
                stopped.append(row["id"])
        if stopped:
            return False
        failed = [r for r in unit_rows if r["status"] == "failed"]
        if failed and fail_fast:
            row = failed[0]
            raise RenderError(f"{source}:{row['line']}: job {row['id']} failed: {row['error']} (fail_fast: the "
                              "batch stopped; run it again to go on)")
        return True

    work = (model, device, threads, str(outdir), checkpoint_every)
    try:
        if ray is not None:
            from .batch_ray import run_on_ray

            run_on_ray(ray, workers, work, units, record, view, on_start)
        elif workers == 1:
            for unit in units:
                view.start(unit)
                if on_start is not None:
                    on_start([j.id for j in unit], None)
                if not record(render_jobs(*work, unit)):
                    break
        else:
            _run_local(workers, work, units, record, view, on_start)
    finally:
        view.close()
    if stopped:
        raise BatchInterrupted(f"stopped with a checkpoint in job(s) {', '.join(stopped)}; run the same batch "
                               "again to go on")
    return [rows[j.id] for j in job_list if j.id in rows]


def _run_local(workers, work, units, record, view, on_start) -> None:
    """N spawned processes; a unit whose process died is re-queued (its render resumes from its checkpoint)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    queue, going = list(units), True
    while queue and going:
        context = mp.get_context("spawn")
        devices = context.Queue()
        for device in worker_devices(work[1], workers):  # one GPU per process on a multi-GPU host
            devices.put(device)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=claim_device,
                                 initargs=(devices,)) as pool:
            running = {}
            try:
                while going and (queue or running):
                    while going and queue and len(running) < workers:
                        unit = queue.pop(0)
                        view.start(unit)
                        running[pool.submit(render_jobs, *work, unit)] = unit
                        if on_start is not None:
                            on_start([j.id for j in unit], None)
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        going = record(fut.result()) and going
                        del running[fut]
                for fut in running:  # stopping: let what runs reach its checkpoint and record it
                    record(fut.result())
            except BrokenProcessPool:  # a worker died (killed, OOM): re-queue what was running, in new processes
                lost = []
                for fut, unit in running.items():
                    if fut.done() and fut.exception() is None:  # finished before the break: keep its rows
                        going = record(fut.result()) and going
                    else:
                        lost.append(unit)
                        view.requeue(unit)
                queue = lost + queue


class _Progress:
    """jobs done / running / failed, overall frames/s and the ETA, on one tqdm line."""

    def __init__(self, total: int, skipped: int, enabled: bool):
        self.done, self.failed, self.running, self.frames = skipped, 0, 0, 0
        self.t0, self.bar = time.perf_counter(), None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=skipped, unit="video", desc="batch", file=sys.stderr)

    def _show(self):
        if self.bar is not None:
            fps = self.frames / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"running {self.running}, failed {self.failed}, {fps:.1f} frames/s")

    def start(self, unit):
        self.running += len(unit)
        self._show()

    def requeue(self, unit):
        self.running -= len(unit)
        self._show()

    def finish(self, row):
        self.running -= 1
        if row["status"] == "done":
            self.done += 1
            self.frames += row["frames"] - row.get("resumed_from", 0)
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
        self._show()

    def close(self):
        if self.bar is not None:
            self.bar.close()
