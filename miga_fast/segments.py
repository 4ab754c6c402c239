"""An mp4 that survives the process: segment files, each complete and fsync'ed when cut, joined at the end.

`SegmentedVideo` writes frames to `<folder>/NNNNNN.mp4` (H.264, as `video.VideoWriter`), one file per checkpoint
interval: `cut()` closes the current segment (it plays on its own from then on) and the next frame opens the
next one. `join(path)` concatenates the closed segments with ffmpeg's concat demuxer and stream copy (nothing is
re-encoded) into `path`, atomically. Frames since the last cut are also kept raw (`pending`, at most one
interval: uint8 [H, W, 3] before upscaling): a checkpoint taken between cuts saves them, so the resumed render
re-encodes them into the same segment an uninterrupted render writes, and the joined file is the same.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from .checkpoint import fsync_dir
from .video import VideoWriter

# No B-frames: a segment's first frame then has no presentation delay (no edit list), so the joined file's
# timestamps run on evenly and readers see every frame once (with B-frames, readers that resample to the frame
# rate showed duplicated frames at segment joins).
SEGMENT_PARAMS = ["-bf", "0"]


def segment_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.mp4"


class SegmentedVideo:
    """Segments `0 .. segments-1` of `folder` are closed; `pending` frames belong to segment `segments`."""

    def __init__(self, folder: Path, fps: int, scale: int, segments: int = 0, pending: list | None = None):
        self.folder, self.fps, self.scale = Path(folder), fps, scale
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segments = segments
        for stale in self.folder.glob("*.mp4"):  # a segment a killed process left half written, or a preview
            if not stale.stem.isdigit() or int(stale.stem) >= segments:
                stale.unlink()
        self.pending: list[np.ndarray] = []
        self._writer: VideoWriter | None = None
        for frame in pending or ():
            self.append(frame)

    def append(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self._writer = VideoWriter(segment_path(self.folder, self.segments), fps=self.fps, scale=self.scale,
                                       ffmpeg_params=SEGMENT_PARAMS)
        self._writer.append(frame)
        self.pending.append(frame)

    def cut(self) -> None:
        """Close the current segment (fsync'ed: it is on disk before any checkpoint that counts it)."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        with open(segment_path(self.folder, self.segments), "rb") as f:
            os.fsync(f.fileno())
        fsync_dir(self.folder)
        self.segments += 1
        self.pending = []

    def abandon(self) -> None:
        """Stop writing the open segment (an error or interruption: it is rewritten from `pending` on resume)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 (a full disk fails the close too; the segment is discarded anyway)
                pass
            self._writer = None

    def join(self, path: Path, extra: list[np.ndarray] | None = None) -> None:
        """Write the closed segments (+ `extra` frames, encoded into a temporary tail segment) to `path`."""
        parts = [segment_path(self.folder, i) for i in range(self.segments)]
        tail = self.folder / "tail.mp4"
        if extra:
            with VideoWriter(tail, fps=self.fps, scale=self.scale, ffmpeg_params=SEGMENT_PARAMS) as w:
                for frame in extra:
                    w.append(frame)
            parts.append(tail)
        try:
            concat(parts, Path(path))
        finally:
            tail.unlink(missing_ok=True)


def concat(parts: list[Path], path: Path) -> None:
    """Stream-copy mp4 `parts` (same codec and size) into `path` atomically. Raises OSError on failure."""
    import imageio_ffmpeg

    listing = path.with_name(f".{path.name}.parts.txt")
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in parts))
    try:
        proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0",
                               "-i", str(listing), "-c", "copy", str(tmp)], capture_output=True, text=True)
        if proc.returncode:
            raise OSError(f"ffmpeg could not join {len(parts)} segments into {path}: {proc.stderr.strip()[-300:]}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        listing.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
