"""The Python API a library or a service calls.

    gen = miga_fast.load_default()                  # the bundled model, on the CPU
    for frame in gen.stream("a red circle moving left on a striped blue background", frames=512):
        ...                                         # uint8 [H, W, 3], as soon as it is finished
    gen.render("out.mp4", prompt, frames=512)       # streams to the file; valid even after Ctrl-C
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, require
from .plan import IterationEnd, PlanConfig, preset
from .runtime import Engine
from .solvers import make_solver
from .video import VideoWriter, check_output_path

MODES = ("fifo", "miga", "miga-stream")


def parse_prompt_schedule(text: str) -> list[tuple[int, str]]:
    """"0:prompt a;200:prompt b" -> [(0, "prompt a"), (200, "prompt b")]; starts at 0, increasing."""
    items = []
    for part in filter(str.strip, text.split(";")):
        start, sep, prompt = part.partition(":")
        if not sep or not start.strip().isdigit() or not prompt.strip():
            raise ConfigError(f"prompt schedule entries must be FRAME:PROMPT separated by ';' (bad entry {part!r})")
        items.append((int(start), prompt.strip()))
    if not items or items[0][0] != 0:
        raise ConfigError("prompt schedule must start with an entry for frame 0 (e.g. '0:a red circle ...')")
    if any(b[0] <= a[0] for a, b in zip(items, items[1:], strict=False)):
        raise ConfigError("prompt schedule frames must be strictly increasing")
    return items


@dataclass
class RenderResult:
    path: Path
    frames: int
    seconds: float
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


class VideoGenerator:
    """A loaded model (denoiser + text encoder + pixel-space codec) and its preset family."""

    def __init__(self, model, *, family: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.family, self.device, self.dtype = family, torch.device(device), dtype
        self.frame_size = model.spec.frame_size
        self._text_cache: dict[str, torch.Tensor] = {}

    def config(self, mode: str = "miga-stream", steps: int | None = None, reflection: bool | None = None,
               overrides: dict | None = None) -> PlanConfig:
        """The preset for `mode`; `overrides` sets any other PlanConfig field (ablations), validated."""
        require(mode in MODES, "mode", f"one of {MODES}", mode)
        overrides = dict(overrides or {})
        if steps is not None:
            overrides["num_steps"] = steps
        if reflection is not None:
            overrides["reflection"] = reflection
        return preset(f"{self.family}-{mode}", **overrides)

    def encode(self, prompt: str) -> torch.Tensor:
        """Text embedding [1, S, D], computed once per prompt."""
        if prompt not in self._text_cache:
            with torch.no_grad():
                self._text_cache[prompt] = self.model.text.encode([prompt]).to(self.dtype)
        return self._text_cache[prompt]

    def stream(self, prompt: str, frames: int = 256, *, mode: str = "miga-stream", seed: int = 0,
               steps: int | None = None, guidance_scale: float = 4.0, prompt_schedule: str | None = None,
               reflection: bool | None = None, window_batch: int = 0, overrides: dict | None = None,
               engine_mode: str = "eager", callback: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
        """Yield `frames` uint8 frames [H, W, 3] in order, each as soon as it is finished.

        prompt_schedule "0:...;200:..." switches the condition when the queue head reaches each frame
        (then `prompt` is ignored). overrides: extra PlanConfig fields, e.g. {"zigzag": 1} (ablations).
        callback(frames_done) is called after every frame.
        """
        require(isinstance(frames, int) and frames > 0, "frames", "a positive integer", frames)
        schedule = parse_prompt_schedule(prompt_schedule) if prompt_schedule else [(0, prompt)]
        conds = [self.encode(p) for _, p in schedule]  # validates every prompt before any work
        cfg = self.config(mode, steps, reflection, overrides)
        solver = make_solver(cfg.solver, cfg.num_steps, shift=self.model.spec.shift)
        shape = (3, self.frame_size, self.frame_size)
        engine = Engine(self.model.denoise, solver, cfg, shape, cond=conds[0], uncond=self.encode(""),
                        guidance_scale=guidance_scale, seed=seed, device=self.device, dtype=self.dtype,
                        window_batch=window_batch, mode=engine_mode)
        head_offset = cfg.padding + cfg.num_steps - cfg.window if cfg.mode == "fifo" else 0
        current = [0]

        def switch_prompt(event):
            if isinstance(event, IterationEnd) and len(schedule) > 1:
                frame = event.queue[cfg.padding] - head_offset
                k = max(i for i, (start, _) in enumerate(schedule) if start <= max(frame, 0))
                if k != current[0]:
                    current[0] = k
                    engine.set_condition(conds[k], self.encode(""))

        with torch.no_grad():
            for i, latent in enumerate(engine.run(frames, on_event=switch_prompt)):
                frame = ((latent.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                yield frame.permute(1, 2, 0).cpu().numpy()
                if callback is not None:
                    callback(i + 1)

    def render(self, path: str | os.PathLike, prompt: str, frames: int = 256, *, fps: int = 12, scale: int = 4,
               progress: bool = True, **kw) -> RenderResult:
        """Stream a video to `path` (.mp4 or .gif). On Ctrl-C the file is closed with every frame so far."""
        path = check_output_path(path)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=frames, unit="frame", desc="rendering")
        start, count, interrupted = time.perf_counter(), 0, False
        with VideoWriter(path, fps=fps, scale=scale) as writer:
            try:
                for frame in self.stream(prompt, frames, **kw):
                    writer.append(frame)
                    count += 1
                    if bar is not None:
                        bar.update(1)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                if bar is not None:
                    bar.close()
        return RenderResult(path, count, time.perf_counter() - start, interrupted)


def load(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32) -> VideoGenerator:
    """Load a model bundle. Supported: a miga_fast bundled-model .safetensors file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from .models.tiny.bundle import TinyVideoModel

        return VideoGenerator(TinyVideoModel.load(path), device=device, dtype=dtype)
    raise ConfigError(f"model path {str(path)!r}: only miga_fast bundled-model .safetensors files can be rendered "
                      "end to end so far (the Wan2.1 DiT loads with miga_fast.models.wan.WanDiT.from_pretrained; "
                      "its VAE/text-encoder bundle is not wired into rendering yet)")


def load_default(device: str = "cpu", dtype: torch.dtype = torch.float32) -> VideoGenerator:
    """The bundled model shipped in the package."""
    from .models.tiny.bundle import DEFAULT_WEIGHTS

    return load(DEFAULT_WEIGHTS, device, dtype)
