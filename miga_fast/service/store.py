"""The service's jobs, persisted in SQLite (`STATE_DIR/jobs.sqlite3`) so a restarted server finishes every
accepted job. One row per job: id, status, the validated request (JSON), progress, timestamps, error."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
ACTIVE = ("queued", "running")


def new_job_id() -> str:
    """An unguessable id (128 random bits), OpenAI-style prefix; the only form a path parameter may take."""
    return "video_" + secrets.token_hex(16)


def is_job_id(text: str) -> bool:
    return len(text) == 38 and text.startswith("video_") and all(c in "0123456789abcdef" for c in text[6:])


@dataclass
class JobRecord:
    id: str
    status: str
    request: dict  # VideoGenerator.render keyword arguments
    frames_done: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None

    @property
    def progress(self) -> float:
        return round(100.0 * self.frames_done / self.request["frames"], 1)

    def public(self) -> dict:
        """The job object of the API (OpenAI's video job fields where they exist)."""
        return {"id": self.id, "object": "video", "status": self.status, "progress": self.progress,
                "frames_done": self.frames_done, "created_at": int(self.created_at),
                "started_at": None if self.started_at is None else int(self.started_at),
                "completed_at": None if self.finished_at is None else int(self.finished_at),
                "error": None if self.error is None else {"message": self.error}, **self.request}


class JobStore:
    """Thread-safe job table (the HTTP handlers and the render worker share it)."""

    def __init__(self, path: Path):
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an accepted job survives kill -9
        self.db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT, request TEXT, "
                        "frames_done INTEGER, created_at REAL, started_at REAL, finished_at REAL, error TEXT)")

    def _rows(self, sql: str, args=()) -> list[JobRecord]:
        with self.lock:
            rows = self.db.execute(sql, args).fetchall()
        return [JobRecord(r[0], r[1], json.loads(r[2]), *r[3:]) for r in rows]

    def add(self, request: dict) -> JobRecord:
        job = JobRecord(new_job_id(), "queued", request, 0, time.time(), None, None, None)
        with self.lock:
            self.db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (job.id, job.status, json.dumps(request), 0, job.created_at, None, None, None))
        return job

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def list(self, limit: int = 100) -> list[JobRecord]:
        return self._rows("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))

    def active(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (a restart re-queues them in this order)."""
        return self._rows("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at")

    def counts(self) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | dict(rows)

    def update(self, job_id: str, **fields) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.lock:
            self.db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))
