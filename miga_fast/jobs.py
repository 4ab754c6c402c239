"""Job files for batch rendering: JSONL (one object per line) or CSV (a header row, the same columns).

Columns / keys: prompt or prompt_schedule (one of them), frames, mode, seed, steps, guidance, size ("HxW" or
[H, W]), negative_prompt, id (letters, digits, '.', '_', '-'; default: derived from the job's content, so the same
job keeps its id). Anything else is an error naming the line and the key. `read_jobs` checks the form of every
line; `check_jobs` validates each job's values against a loaded model (`VideoGenerator.request`), so nothing is
rendered until the whole file is clean.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

KEYS = ("id", "prompt", "prompt_schedule", "frames", "mode", "seed", "steps", "guidance", "size", "negative_prompt")
INTS, FLOATS = ("frames", "seed", "steps"), ("guidance",)
ID_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class JobFileError(ConfigError):
    """A job file has bad lines: `problems` [(line, message)], shown one per line as `JOBS:LINE: message`."""

    def __init__(self, path, problems: list[tuple[int, str]]):
        self.path, self.problems = str(path), problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.path}:{line}: {message}" for line, message in self.problems]


@dataclass(frozen=True)
class Job:
    """One video of a batch: `args` are `VideoGenerator.render` keyword arguments; `line` its line in the file."""

    id: str
    line: int
    args: dict = field(hash=False)

    def digest(self) -> str:
        """A hash of what the video depends on (the manifest records it; a changed job under an old id is caught)."""
        return hashlib.sha256(json.dumps(self.args, sort_keys=True).encode()).hexdigest()[:16]

    def group(self) -> tuple:
        """Jobs with equal groups share one long-lived engine (plan config, size, CFG)."""
        a = self.args
        return (a.get("mode", "miga-stream"), a.get("steps"), str(a.get("size")), a.get("guidance_scale"))


def _size(value):
    if isinstance(value, str):
        h, sep, w = value.lower().partition("x")
        if not (sep and h.strip().isdigit() and w.strip().isdigit()):
            raise ValueError(f"size must be 'HxW' or [H, W] (got {value!r})")
        return int(h), int(w)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"size must be 'HxW' or [H, W] (got {value!r})")


def _job(record: dict, line: int) -> Job:
    unknown = [k for k in record if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (allowed: {', '.join(KEYS)})")
    if ("prompt" in record) == ("prompt_schedule" in record):
        raise ValueError("give exactly one of prompt and prompt_schedule")
    args = {}
    for key, value in record.items():
        if key in INTS:
            if isinstance(value, str):
                value = int(value) if value.strip().lstrip("-").isdigit() else value
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{key} must be an integer (got {value!r})")
        elif key in FLOATS:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be a number (got {value!r})") from None
        elif key == "size":
            value = _size(value)
        elif not isinstance(value, str):
            raise ValueError(f"{key} must be a string (got {value!r})")
        args[{"guidance": "guidance_scale"}.get(key, key)] = value
    job_id = args.pop("id", None)
    if job_id is None:
        job_id = "job-" + hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    if not ID_FORM.fullmatch(job_id):
        raise ValueError(f"id must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit "
                         f"(got {job_id!r})")
    return Job(job_id, line, args)


def _records(path: Path):
    """(line number, dict) per job line; a line that is not a JSON object / a CSV row raises ValueError."""
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(text.splitlines())
        for row in rows:
            if None in row:
                yield rows.line_num, ValueError("more cells than header columns")
                continue
            yield rows.line_num, {k: v for k, v in row.items() if v not in (None, "")}
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        yield n, record if isinstance(record, dict) else ValueError("a job must be a JSON object")


def read_jobs(path: str | os.PathLike, *, skip_invalid: bool = False) -> tuple[list[Job], list[tuple[int, str]]]:
    """Jobs of a .jsonl / .csv file and the problems found [(line, message)]; raises JobFileError on any problem
    unless `skip_invalid` (then bad lines are left out and returned)."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise ConfigError(f"job file must be .jsonl or .csv (got {str(path)!r})")
    if not path.is_file():
        raise ConfigError(f"job file {str(path)!r} does not exist")
    jobs, problems, seen = [], [], {}
    for n, record in _records(path):
        try:
            if isinstance(record, Exception):
                raise record
            job = _job(record, n)
            if job.id in seen:
                raise ValueError(f"duplicate id {job.id!r} (first on line {seen[job.id]})")
            seen[job.id] = n
            jobs.append(job)
        except ValueError as exc:
            problems.append((n, str(exc)))
    if not jobs and not problems:
        problems.append((0, "no jobs in the file"))
    if problems and not skip_invalid:
        raise JobFileError(path, problems)
    return jobs, problems


def check_jobs(gen, jobs: list[Job]) -> list[tuple[int, str]]:
    """Validate every job's values with the model's own checks (prompt words, frames, size, ...):
    [(line, message)] of the jobs that fail."""
    problems = []
    for job in jobs:
        try:
            gen.request(**job.args)
        except ConfigError as exc:
            problems.append((job.line, " ".join(str(exc).split())))
    return problems
