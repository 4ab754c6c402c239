"""The render worker: one thread per device, the model loaded once, jobs from a bounded queue rendered one after
another through the resumable render (`VideoGenerator.render`, long-lived engines kept between jobs).

Each job renders to `STATE_DIR/videos/<id>.mp4` with checkpoints every `checkpoint_every` frames, so a server
killed mid-job and restarted resumes it (`resume=True`) with no frame lost or repeated. DELETE sets the job's
cancel flag: the render stops at the next frame, keeps nothing, and the job is marked cancelled.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from pathlib import Path

from ..render import checkpoint_dir
from .hub import FrameHub
from .store import JobStore


class QueueFull(Exception):
    pass


class RenderWorker:
    def __init__(self, gen, store: JobStore, hub: FrameHub, videos: Path, max_queue: int, checkpoint_every: int):
        self.gen, self.store, self.hub, self.videos = gen, store, hub, videos
        self.checkpoint_every = checkpoint_every
        self.max_queue = max_queue
        self.queue: queue.Queue[str] = queue.Queue()
        self.cancelled: set[str] = set()
        self.current: str | None = None
        self.fps = 0.0  # frames/s of the job rendering now (0 when idle)
        self.frames_total = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="miga-render", daemon=True)

    def start(self) -> None:
        for job in self.store.active():  # a restart: every accepted, unfinished job again, oldest first
            self.queue.put(job.id)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.queue.put("")

    def depth(self) -> int:
        return self.queue.qsize()

    def submit(self, request: dict):
        with self._lock:
            if self.queue.qsize() >= self.max_queue:
                raise QueueFull
            job = self.store.add(request)
            self.queue.put(job.id)
        return job

    def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)
        job = self.store.get(job_id)
        if job is not None and job.status == "queued":
            self.store.update(job_id, status="cancelled", finished_at=time.time())

    def path(self, job_id: str) -> Path:
        return self.videos / f"{job_id}.mp4"

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while not self._stop.is_set():
            job_id = self.queue.get()
            if not job_id:
                continue
            job = self.store.get(job_id)
            if job is None or job.status not in ("queued", "running") or job_id in self.cancelled:
                continue
            self.current = job_id
            try:
                self._render(job)
            finally:
                self.current, self.fps = None, 0.0

    def _render(self, job) -> None:
        start = time.perf_counter()
        path = self.path(job.id)
        self.store.update(job.id, status="running", started_at=job.started_at or time.time())
        self.hub.open(job.id)
        done = {"n": 0, "first": None}

        def on_frame(index, frame):
            self.hub.publish(job.id, index, frame)
            if done["first"] is None:
                done["first"] = index
            done["n"] += 1
            self.frames_total += 1
            self.fps = done["n"] / max(time.perf_counter() - start, 1e-9)
            if (index + 1) % 4 == 0 or index + 1 == job.request["frames"]:
                self.store.update(job.id, frames_done=index + 1)

        try:
            # eager: a compile (45 s cold on a CPU, uninterruptible) would hold the first frame and a cancel of a
            # long job; engine mode "auto" would pick it for jobs over its break-even
            result = self.gen.render(path, progress=False, resume=True, checkpoint_every=self.checkpoint_every,
                                     stop=lambda: job.id in self.cancelled or self._stop.is_set(),
                                     on_frame=on_frame, engine_mode="eager", **job.request)
        except Exception as exc:  # noqa: BLE001 (the job fails, the server goes on)
            self.store.update(job.id, status="failed", error=" ".join(f"{type(exc).__name__}: {exc}".split()),
                              finished_at=time.time())
        else:
            if job.id in self.cancelled:
                path.unlink(missing_ok=True)
                shutil.rmtree(checkpoint_dir(path), ignore_errors=True)
                self.store.update(job.id, status="cancelled", finished_at=time.time())
            elif not result.interrupted:
                self.store.update(job.id, status="completed", frames_done=result.frames, finished_at=time.time())
            # interrupted by a shutdown: stays "running" with its checkpoint; the next start resumes it
        finally:
            self.hub.close(job.id)
            forget = threading.Timer(60.0, self.hub.forget, (job.id,))  # late readers still get the live buffer
            forget.daemon = True
            forget.start()
