"""Streaming video files: frames are appended as they are produced and the file is valid when closed
(also after Ctrl-C). mp4 via imageio-ffmpeg (H.264), gif via Pillow; both imported lazily."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError

FORMATS = (".mp4", ".gif")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Frames [..., 3, H, W] in [-1, 1] (clamped) -> uint8 [..., H, W, 3] (one frame or a stack of them)."""
    frames = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.movedim(-3, -1).cpu().numpy()


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail before rendering: the extension must be supported and the folder writable."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"output must end in one of {FORMATS} (got {str(path)!r})")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"output folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"output path {str(path)!r} is not writable")
    return path


class VideoWriter:
    """`append(frame uint8 [H, W, 3])` ... `close()`; a context manager. ffmpeg_params: extra encoder options (mp4)."""

    def __init__(self, path: str | os.PathLike, fps: int = 12, scale: int = 1, ffmpeg_params: list[str] | None = None):
        self.path = check_output_path(path)
        self.fps, self.scale, self.frames = fps, scale, 0
        self._gif: list = []
        self._writer = None
        if self.path.suffix.lower() == ".mp4":
            try:
                import imageio.v2 as imageio
            except ImportError as exc:
                raise ImportError("mp4 output needs imageio and imageio-ffmpeg: "
                                  "pip install 'miga_fast[video]' (or write a .gif)") from exc
            self._writer = imageio.get_writer(str(self.path), fps=fps, codec="libx264", quality=8,
                                              macro_block_size=1, ffmpeg_log_level="error",
                                              output_params=list(ffmpeg_params or []))

    def append(self, frame: np.ndarray) -> None:
        if self.scale > 1:
            frame = frame.repeat(self.scale, axis=0).repeat(self.scale, axis=1)
        if self._writer is not None:
            self._writer.append_data(frame)
        else:
            self._gif.append(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        elif self._gif:
            from PIL import Image

            images = [Image.fromarray(f) for f in self._gif]
            images[0].save(self.path, save_all=True, append_images=images[1:], duration=int(1000 / self.fps), loop=0)
            self._gif = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """All frames of an mp4/gif as uint8 [H, W, 3] arrays."""
    import imageio.v2 as imageio

    return [np.asarray(f)[..., :3] for f in imageio.mimread(str(path), memtest=False)]


def contact_sheet(frames: list[np.ndarray], every: int = 32, columns: int = 8) -> np.ndarray:
    """A grid of every `every`-th frame (uint8 [rows*H, columns*W, 3]), with a 2-px separator."""
    picked = frames[::every] or frames[:1]
    h, w, _ = picked[0].shape
    rows = -(-len(picked) // columns)
    sheet = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for i, f in enumerate(picked):
        r, c = divmod(i, columns)
        sheet[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = f
    return sheet
