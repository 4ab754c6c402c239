"""Rendering a video to a file, resumably: checkpoints of the queue state, segment files, faults.

`render_video` is what `VideoGenerator.render` runs. For an mp4 with checkpoints on (the default):

    out.mp4.ckpt/state.ckpt        the last checkpoint (miga_fast.checkpoint: atomic, versioned, hashed)
    out.mp4.ckpt/segments/*.mp4    closed segments, one per checkpoint interval (each plays on its own)
    out.mp4                        the segments joined without re-encoding: at the end and on an interruption

A checkpoint holds the engine's snapshot (ring latents, solver history, base clip, reflection score, the
planner's position as events consumed + reflection replies), the streaming decoder's state, the prompt-schedule
position, the frames done, the closed segment count and the frames since the last cut (raw uint8, at most one
interval), plus what it belongs to: the model weights' SHA-256, the plan config and the render settings. Periodic
checkpoints are taken every `checkpoint_every` frames at the end of a latent, right after a segment is cut; a
SIGINT / SIGTERM / `stop()` takes one at the next latent end. Resuming replays the pure planner to the saved
position, loads the tensors and re-encodes the raw frames into the open segment: the segments, and so the file,
are those of an uninterrupted render. The folder is removed when the video is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .errors import CheckpointError, ConfigError, NonFiniteError, RenderError, require
from .segments import SegmentedVideo
from .video import VideoWriter, check_output_path

CHECKPOINT_EVERY = 64  # frames between checkpoints (and segments) by default
MAX_FPS, MAX_SCALE, MAX_SIDE = 240, 64, 8192


def checkpoint_dir(path: Path) -> Path:
    """Where the render of `path` keeps its checkpoint and segments: `<path>.ckpt/`."""
    return path.with_name(path.name + ".ckpt")


@dataclass
class RenderResult:
    """`frames`: frames in the file; `rendered`: frames rendered by this call (after `resumed_from`)."""

    path: Path
    frames: int
    seconds: float
    interrupted: bool = False
    resumed_from: int = 0
    already_done: bool = False
    checkpoints: int = 0
    checkpoint_seconds: float = 0.0

    @property
    def rendered(self) -> int:
        return self.frames - self.resumed_from

    @property
    def fps(self) -> float:
        return self.rendered / max(self.seconds, 1e-9)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def render_video(gen, req, path, *, fps: int | None = None, scale: int | None = None, progress: bool = True,
                 resume: bool = False, checkpoint_every: int | None = None, stop: Callable[[], bool] | None = None,
                 on_frame: Callable[[int, np.ndarray], None] | None = None,
                 callback: Callable[[int], None] | None = None):
    """Render `req` (a validated `VideoRequest` of `gen`) to `path`; see `VideoGenerator.render`."""
    path = check_output_path(path)
    fps = gen.bundle.fps if fps is None else fps
    scale = gen.bundle.render_scale if scale is None else scale
    require(_is_int(fps) and 1 <= fps <= MAX_FPS, "fps", f"an integer in [1, {MAX_FPS}]", fps)
    require(_is_int(scale) and 1 <= scale <= MAX_SCALE, "scale", f"an integer in [1, {MAX_SCALE}]", scale)
    side = max(req.size or gen.size)
    require(side * scale <= MAX_SIDE, "scale", f"at most {MAX_SIDE // side} for {side}-pixel frames (the file's "
            f"frames must be at most {MAX_SIDE} pixels wide)", scale)
    every = CHECKPOINT_EVERY if checkpoint_every is None else checkpoint_every
    require(_is_int(every) and every >= 0, "checkpoint_every", "an integer >= 0 (0: no checkpoints)", every)
    gif = path.suffix.lower() == ".gif"
    if gif and (resume or checkpoint_every):
        raise ConfigError(f"resume / checkpoint_every need an .mp4 output (a gif is written at the end; got "
                          f"{str(path)!r})")
    if every == 0 and resume:
        raise ConfigError("resume needs checkpoints: checkpoint_every must be > 0")
    hooks = _Hooks(progress, req.frames, on_frame, callback, stop)
    if gif or every == 0:
        return _render_direct(gen, req, path, fps, scale, hooks)
    return _Resumable(gen, req, path, fps, scale, every, hooks).run(resume)


class _Hooks:
    """Per-frame progress bar, callbacks and the stop request (a callable, or SIGINT / SIGTERM)."""

    def __init__(self, progress, total, on_frame, callback, stop):
        self.progress, self.total, self.on_frame, self.callback, self.stop = progress, total, on_frame, callback, stop
        self.bar = None
        self.signalled: int | None = None

    def start(self, done: int) -> None:
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=done, unit="frame", desc="rendering")

    def frame(self, index: int, frame: np.ndarray) -> None:
        if self.on_frame is not None:
            self.on_frame(index, frame)
        if self.callback is not None:
            self.callback(index + 1)
        if self.bar is not None:
            self.bar.update(1)

    def stop_requested(self) -> bool:
        return self.signalled is not None or (self.stop is not None and bool(self.stop()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    @contextlib.contextmanager
    def signals(self):
        """SIGINT / SIGTERM ask for a checkpoint at the next latent end; a second SIGINT aborts at once.
        Installed only in the main thread (elsewhere, e.g. a service worker, `stop` is the way)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, _frame):
            if self.signalled is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signalled = signum
            print(f"\nmiga-fast: {signal.Signals(signum).name}: stopping at the next frame with a checkpoint "
                  "(Ctrl-C again to abort now)", file=sys.stderr)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _render_direct(gen, req, path, fps, scale, hooks):
    """gif, or mp4 without checkpoints: frames straight into the file; on Ctrl-C it keeps every frame so far."""
    start, count, interrupted = time.perf_counter(), 0, False
    hooks.start(0)
    try:
        with VideoWriter(path, fps=fps, scale=scale) as writer, gen.frame_stream(req) as frames:
            try:
                for frame in frames:
                    writer.append(frame)
                    hooks.frame(count, frame)
                    count += 1
            except KeyboardInterrupt:
                interrupted = True
    finally:
        hooks.close()
    return RenderResult(path, count, time.perf_counter() - start, interrupted)


class _Resumable:
    def __init__(self, gen, req, path: Path, fps: int, scale: int, every: int, hooks: _Hooks):
        self.gen, self.req, self.path, self.every, self.hooks = gen, req, path, every, hooks
        self.folder = checkpoint_dir(path)
        self.file = self.folder / "state.ckpt"
        self.fps, self.scale = fps, scale
        self.identity = {"weights": gen.weights_hash(), "plan": dataclasses.asdict(req.cfg),
                         "render": {**req.settings(), "fps": fps, "scale": scale, "checkpoint_every": every,
                                    "device": gen.device.type, "dtype": str(gen.dtype)}}
        self.saved_frames = 0  # frames covered by the checkpoint on disk
        self.checkpoints, self.checkpoint_seconds = 0, 0.0

    # ------------------------------------------------------------ checkpoints
    def _load(self) -> dict:
        payload = checkpoint.load(self.file)
        ident = payload.get("identity") if isinstance(payload, dict) else None
        if not isinstance(ident, dict):
            raise CheckpointError(f"checkpoint {str(self.file)!r} has no identity record; delete it to start over")
        if ident.get("weights") != self.identity["weights"]:
            raise CheckpointError(f"checkpoint {str(self.file)!r} was written with other model weights (sha256 "
                                  f"{str(ident.get('weights'))[:12]}..., this model {self.identity['weights'][:12]}...)"
                                  "; resume with the same model, or delete the checkpoint to start over")
        for part, what in (("plan", "another plan config"), ("render", "other render settings")):
            diff = checkpoint.first_difference(ident.get(part) or {}, self.identity[part])
            if diff:
                raise CheckpointError(f"checkpoint {str(self.file)!r} is of {what} ({diff}); resume with the "
                                      "arguments of the interrupted render, or delete the checkpoint to start over")
        return payload

    def _save(self, stream_state: dict | None, video: SegmentedVideo, done: int) -> None:
        t0 = time.perf_counter()
        pending = torch.from_numpy(np.stack(video.pending)) if video.pending else None
        checkpoint.save(self.file, {"identity": self.identity, "stream": stream_state, "segments": video.segments,
                                    "pending": pending, "frames": done})
        self.saved_frames = done
        self.checkpoints += 1
        self.checkpoint_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------ the render
    def run(self, resume: bool):
        if self.file.exists():
            if not resume:
                raise ConfigError(f"{str(self.folder)!r} holds the checkpoint of an unfinished render of "
                                  f"{self.path.name}: resume it (--resume / resume=True) or delete it to start over")
            payload = self._load()
        elif resume and self.path.exists():
            import imageio_ffmpeg

            frames = imageio_ffmpeg.count_frames_and_secs(str(self.path))[0]
            return RenderResult(self.path, frames, 0.0, resumed_from=frames, already_done=True)
        else:
            payload = {"stream": None, "segments": 0, "pending": None, "frames": 0}
            shutil.rmtree(self.folder, ignore_errors=True)
        start = time.perf_counter()
        pending = [] if payload["pending"] is None else list(payload["pending"].numpy())
        video = None
        self.saved_frames = resumed = int(payload["frames"])
        try:
            video = SegmentedVideo(self.folder / "segments", self.fps, self.scale, payload["segments"], pending)
            if payload["stream"] is None:
                self._save(None, video, 0)  # the render's identity is on disk before any work
            interrupted = self._loop(video, payload["stream"], len(pending))
        except OSError as exc:
            if video is not None:
                video.abandon()
            raise RenderError(f"writing {self.path} failed: {exc.strerror or exc}. Kept: the checkpoint at frame "
                              f"{self.saved_frames} in {self.folder}/ (every frame before it); fix the cause (free "
                              "space, folder permissions) and run again with --resume") from exc
        except NonFiniteError as exc:
            video.abandon()
            raise NonFiniteError(f"{exc}. The last good checkpoint (frame {self.saved_frames}) is kept in "
                                 f"{self.folder}/") from exc
        except BaseException:
            if video is not None:
                video.abandon()
            raise
        finally:
            self.hooks.close()
        seconds = time.perf_counter() - start
        if not interrupted:
            shutil.rmtree(self.folder)
        return RenderResult(self.path, self.frames_written, seconds, interrupted is not None, resumed, False,
                      self.checkpoints, self.checkpoint_seconds)

    def _loop(self, video: SegmentedVideo, state: dict | None, pending: int) -> int | None:
        """Frames into segments, checkpoints at segment cuts and on a stop request; None, or the frames done at
        the interruption. The file is joined at the end (and, with everything so far, on an interruption)."""
        req, every = self.req, self.every
        with self.gen.frame_stream(req, state) as frames, self.hooks.signals():
            last_cut = frames.done - pending
            self.hooks.start(frames.done)
            for frame in frames:
                video.append(frame)
                try:
                    self.hooks.frame(frames.done - 1, frame)
                except KeyboardInterrupt:  # raised by a callback (a signal only sets a flag): no checkpoint here
                    video.abandon()
                    video.join(self.path, extra=video.pending)
                    self.frames_written = frames.done
                    return frames.done
                if not frames.at_latent_end:
                    continue
                if frames.done - last_cut >= every and frames.done < req.frames:
                    t0 = time.perf_counter()
                    video.cut()
                    self.checkpoint_seconds += time.perf_counter() - t0  # the cut is part of the checkpoint's cost
                    last_cut = frames.done
                    self._save(frames.state(), video, frames.done)
                if self.hooks.stop_requested() and frames.done < req.frames:
                    self._save(frames.state(), video, frames.done)
                    video.abandon()
                    video.join(self.path, extra=video.pending)
                    self.frames_written = frames.done
                    return frames.done
            video.cut()
            video.join(self.path)
            self.frames_written = frames.done
        return None
