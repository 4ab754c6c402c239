"""The study's journal: every rendered pack's scored rows, appended as soon as the pack is done, so a study
that is interrupted (Ctrl-C, a budget, the end of a session) resumes where it stopped when re-run.

One JSON line per pack: ``{"key": ..., "rows": [...]}``. The key names everything the pack's videos depend on
(the model file's SHA-256, variant, videos, engine seed, frames, guidance, dtype), so a line is only ever reused
for the same render; lines for other settings are kept and ignored. A torn last line (a kill mid-write) is
skipped, and that pack is rendered again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack_key(model_sha: str, variant: str, videos: list[tuple[str, int]], seed: int, frames: int, guidance: float,
             dtype: str) -> str:
    return json.dumps([model_sha, variant, [list(v) for v in videos], seed, frames, guidance, dtype])


class Journal:
    """Scored rows per pack key, loaded from `path` (if it exists) and appended to it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.packs: dict[str, list[dict]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn by a kill mid-write: that pack is rendered again
                self.packs[entry["key"]] = [_from_json(r) for r in entry["rows"]]

    def get(self, key: str) -> list[dict] | None:
        return self.packs.get(key)

    def add(self, key: str, rows: list[dict]) -> None:
        self.packs[key] = rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, "rows": [_to_json(r) for r in rows]}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _to_json(row: dict) -> dict:
    out = {k: float(v) if isinstance(v, np.floating) else v for k, v in row.items() if k != "series"}
    # six significant digits: the per-frame series are most of a line
    out["series"] = {k: [float(f"{x:.6g}") for x in np.asarray(s, dtype=float)] for k, s in row["series"].items()}
    return out


def _from_json(row: dict) -> dict:
    return {**row, "series": {k: np.asarray(s, dtype=float) for k, s in row["series"].items()}}
