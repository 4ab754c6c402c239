"""Render checkpoints: one file, written atomically, that a render goes on from exactly.

File layout: the line ``MIGA-CKPT <json header>\\n`` (format version, payload byte count and SHA-256), then the
payload: a `torch.save` of plain data (tensors, numbers, strings, lists, dicts), read back with
``weights_only=True`` (no pickled code). A truncated or altered file fails the length / hash check before torch
sees it. Writes go to a temporary file in the same folder, are fsync'ed and renamed over the old checkpoint (then
the folder is fsync'ed), so a crash at any point leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from .errors import CheckpointError

FORMAT_VERSION = 1
MAGIC = b"MIGA-CKPT "


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` atomically (temp file + fsync + rename + fsync of the folder). Raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: Path, payload: dict) -> int:
    """Write `payload` (plain data) as a checkpoint file; returns its size in bytes."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    header = json.dumps({"version": FORMAT_VERSION, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    data = MAGIC + header.encode() + b"\n" + body
    write_atomic(path, data)
    return len(data)


def load(path: Path) -> dict:
    """Read a checkpoint; a corrupt, truncated or other-version file raises CheckpointError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    line, sep, body = data.partition(b"\n")
    try:
        if not line.startswith(MAGIC) or not sep:
            raise ValueError("not a miga_fast checkpoint")
        header = json.loads(line[len(MAGIC):])
        version = header["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt ({exc}); delete it to start over") from exc
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {version}, this miga_fast reads version "
                              f"{FORMAT_VERSION}; finish it with the release that wrote it, or delete it")
    if len(body) != header["bytes"] or hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt ({len(body)} of {header['bytes']} "
                              "payload bytes, or a hash mismatch); delete it to start over")
    try:
        return torch.load(io.BytesIO(body), weights_only=True)
    except Exception as exc:  # a hash-valid payload torch cannot read: written by something else
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be decoded: {exc}") from exc


def weights_hash(*modules: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every parameter and buffer of `modules`."""
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def first_difference(saved: dict, current: dict, prefix: str = "") -> str | None:
    """The first key whose value differs between two nested dicts, as 'key: saved X, now Y'; None if equal."""
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff = first_difference(a, b, f"{prefix}{key}.")
            if diff:
                return diff
        elif a != b:
            return f"{prefix}{key}: checkpoint {a!r}, now {b!r}"
    return None
