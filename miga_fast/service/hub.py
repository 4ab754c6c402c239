"""Live frames of running jobs for the stream endpoints: the renderer appends, any number of clients read.

The renderer never waits on a client: `publish` appends a JPEG to the job's bounded buffer (the last `keep` frames)
and wakes the readers. A reader walks the buffer at its own pace; one that falls more than `keep` frames behind (or
connects late to a long video) skips to the oldest frame still held, and each frame it gets says how many it
missed (`dropped`). A finished job's frames come from its mp4 instead (`app.py`).
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """uint8 [H, W, 3] -> JPEG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


@dataclass
class _Live:
    frames: deque = field(default_factory=deque)  # (index, jpeg)
    first: int = 0  # index of frames[0]
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


class FrameHub:
    def __init__(self, keep: int = 2048):
        self.keep = keep
        self._jobs: dict[str, _Live] = {}
        self._lock = threading.Lock()

    def open(self, job_id: str, first: int = 0) -> None:
        """A job starts (or resumes at frame `first`)."""
        with self._lock:
            self._jobs[job_id] = _Live(first=first)

    def publish(self, job_id: str, index: int, frame: np.ndarray) -> None:
        live = self._jobs[job_id]
        data = jpeg(frame)
        with live.cond:
            live.frames.append((index, data))
            while len(live.frames) > self.keep:
                live.frames.popleft()
                live.first += 1
            live.cond.notify_all()

    def close(self, job_id: str) -> None:
        """No more frames (completed, failed, cancelled); readers finish what is held, then stop."""
        live = self._jobs.get(job_id)
        if live is not None:
            with live.cond:
                live.closed = True
                live.cond.notify_all()

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def is_live(self, job_id: str) -> bool:
        return job_id in self._jobs

    def frames(self, job_id: str, timeout: float = 30.0) -> Iterator[tuple[int, bytes, int]]:
        """(index, jpeg, dropped so far) from the first frame held on, live, until the job closes. Blocking:
        the HTTP layer runs it in a thread."""
        live = self._jobs.get(job_id)
        if live is None:
            return
        nxt, dropped = None, 0
        while True:
            with live.cond:
                while True:
                    held = list(live.frames)
                    start = nxt if nxt is not None else (held[0][0] if held else live.first)
                    todo = [f for f in held if f[0] >= start]
                    if todo or live.closed:
                        break
                    if not live.cond.wait(timeout):
                        return  # nothing for a long time: let the client reconnect
            if not todo:
                return
            for index, data in todo:
                if nxt is not None and index > nxt:
                    dropped += index - nxt
                elif nxt is None and index > 0:
                    dropped += index  # connected after frames that are no longer held
                nxt = index + 1
                yield index, data, dropped
