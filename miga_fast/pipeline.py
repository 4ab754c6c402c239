"""The Python API a library or a service calls.

    gen = miga_fast.load_default()                  # the bundled model, on the CPU
    gen = miga_fast.load("Wan2.1-T2V-1.3B-Diffusers", "cuda", torch.bfloat16)   # or VideoCrafter2/model.ckpt
    for frame in gen.stream("a red circle moving left on a striped blue background", frames=512):
        ...                                         # uint8 [H, W, 3], as soon as it is finished
    gen.render("out.mp4", prompt, frames=512)       # streams to the file; valid even after Ctrl-C
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, require
from .plan import MODES, PRESETS, IterationEnd, PlanConfig, preset
from .runtime import Engine
from .runtime.factory import make_engine
from .video import VideoWriter, check_output_path, to_uint8


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
    """A loaded model bundle (denoiser + codec + text encoder, see `models.load.ModelBundle`) and its presets.

    `model`: a ModelBundle (placed on its device by the loader), or a TinyVideoModel (moved to device/dtype).
    `device` and `dtype` are those of the engine's latents.

    Engines are long-lived: the generator keeps up to `max_engines` idle engines, keyed by what fixes their
    buffers and compiled steps (plan config, latent shape, CFG scale, window batch, engine mode), least recently
    used first out; the next video with the same key resets one instead of allocating and compiling again.
    Each holds its ring (capacity + 1 latents and solver history; see `Engine`) and, compiled or graphed, its
    code / graph pool. `release()` drops them all. A video streaming while another starts gets its own engine.
    """

    def __init__(self, model, *, family: str | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, max_engines: int = 2):
        from .models.load import ModelBundle, tiny_bundle

        if not isinstance(model, ModelBundle):
            model = tiny_bundle(model.to(device=device, dtype=dtype).eval())
        self.bundle = model
        self.family = family or model.family
        self.device, self.dtype = torch.device(device), dtype
        self.size = model.size
        self.model = model.module  # the denoiser module (quality/ reads the bundled model's spec from it)
        self.frame_size = model.size[0]  # the bundled model's square frame side
        require(isinstance(max_engines, int) and max_engines >= 0, "max_engines", "an integer >= 0", max_engines)
        self.max_engines = max_engines
        self._engines: OrderedDict[tuple, Engine] = OrderedDict()  # idle engines, least recently used first

    def engine(self, cfg: PlanConfig, *, cond: torch.Tensor, uncond: torch.Tensor | None, seed: int = 0,
               size: tuple[int, int] | None = None, guidance_scale: float | None = None, window_batch: int = 0,
               engine_mode: str = "eager") -> Engine:
        """An idle engine for this configuration, reset to (seed, cond, uncond); built on first use.

        The engine leaves the cache while in use: hand it back with `_return_engine` (stream() does).
        """
        guidance = self.bundle.guidance_scale if guidance_scale is None else float(guidance_scale)
        key = (cfg, self.bundle.latent_shape(size), guidance, window_batch, engine_mode)
        engine = self._engines.pop(key, None)
        if engine is None:
            engine = make_engine(self.bundle, cfg, size=size, guidance_scale=guidance, cond=cond, uncond=uncond,
                                 seed=seed, device=self.device, dtype=self.dtype, window_batch=window_batch,
                                 mode=engine_mode)
            engine.cache_key = key
        else:
            engine.reset(seed, cond, uncond)
        return engine

    def _return_engine(self, engine: Engine) -> None:
        self._engines[engine.cache_key] = engine
        while len(self._engines) > self.max_engines:
            self._engines.popitem(last=False)

    @property
    def engines(self) -> list[Engine]:
        """The idle engines kept for reuse, least recently used first."""
        return list(self._engines.values())

    def release(self) -> None:
        """Drop every cached engine (their rings, compiled steps and graphs are freed with them)."""
        self._engines.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def config(self, mode: str = "miga-stream", steps: int | None = None, reflection: bool | None = None,
               overrides: dict | None = None) -> PlanConfig:
        """The preset for `mode`; `overrides` sets any other PlanConfig field (ablations), validated."""
        require(mode in MODES, "mode", f"one of {MODES}", mode)
        allowed = tuple(m for m in MODES if f"{self.family}-{m}" in PRESETS)
        require(mode in allowed, "mode", f"one of {allowed} for the {self.family} model family", mode)
        overrides = dict(overrides or {})
        if steps is not None:
            overrides["num_steps"] = steps
        if reflection is not None:
            overrides["reflection"] = reflection
        return preset(f"{self.family}-{mode}", **overrides)

    def encode(self, prompt: str) -> torch.Tensor:
        """Text embedding [1, S, D] on the engine's device and dtype, computed once per prompt."""
        return self.bundle.text.encode(prompt).to(self.device, self.dtype)

    def stream(self, prompt: str, frames: int = 256, *, mode: str = "miga-stream", seed: int = 0,
               steps: int | None = None, guidance_scale: float | None = None, negative_prompt: str | None = None,
               size: tuple[int, int] | None = None, prompt_schedule: str | None = None,
               reflection: bool | None = None, window_batch: int = 0, overrides: dict | None = None,
               engine_mode: str = "eager", callback: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
        """Yield `frames` uint8 frames [H, W, 3] in order, each as soon as the codec has decoded it.

        guidance_scale / negative_prompt / size (H, W): default the model's (its official sampler's values).
        prompt_schedule "0:...;200:..." switches the condition when the queue head reaches the latent of each
        frame (then `prompt` is ignored). overrides: extra PlanConfig fields, e.g. {"zigzag": 1} (ablations).
        callback(frames_done) is called after every frame.
        """
        require(isinstance(frames, int) and frames > 0, "frames", "a positive integer", frames)
        bundle, codec = self.bundle, self.bundle.codec
        schedule = parse_prompt_schedule(prompt_schedule) if prompt_schedule else [(0, prompt)]
        negative = bundle.negative_prompt if negative_prompt is None else negative_prompt
        conds = [self.encode(p) for _, p in schedule]  # validates every prompt before any work
        uncond = self.encode(negative)
        cfg = self.config(mode, steps, reflection, overrides)
        engine = self.engine(cfg, cond=conds[0], uncond=uncond, seed=seed, size=size, guidance_scale=guidance_scale,
                             window_batch=window_batch, engine_mode=engine_mode)
        try:
            yield from self._frames(engine, cfg, codec, schedule, conds, uncond, frames, callback)
        finally:  # also on an early stop (the consumer closed the stream): the engine is idle again
            self._return_engine(engine)

    @staticmethod
    def _frames(engine: Engine, cfg: PlanConfig, codec, schedule, conds, uncond, frames: int,
                callback: Callable[[int], None] | None) -> Iterator[np.ndarray]:
        head_offset = cfg.padding + cfg.num_steps - cfg.window if cfg.mode == "fifo" else 0
        starts = [codec.latent_of(start) for start, _ in schedule]  # schedule frames -> latent indices
        current = [0]

        def switch_prompt(event):
            if isinstance(event, IterationEnd) and len(schedule) > 1:
                latent = event.queue[cfg.padding] - head_offset
                k = max(i for i, start in enumerate(starts) if start <= max(latent, 0))
                if k != current[0]:
                    current[0] = k
                    engine.set_condition(conds[k], uncond)

        decoder, done = codec.stream_decoder(), 0
        with torch.no_grad():
            for latent in engine.run(codec.latents_for(frames), on_event=switch_prompt):
                for frame in decoder.push(latent):
                    yield to_uint8(frame)
                    done += 1
                    if callback is not None:
                        callback(done)
                    if done == frames:
                        return
            for frame in decoder.flush()[: frames - done]:
                yield to_uint8(frame)
                done += 1
                if callback is not None:
                    callback(done)

    def render(self, path: str | os.PathLike, prompt: str, frames: int = 256, *, fps: int | None = None,
               scale: int | None = None, progress: bool = True, **kw) -> RenderResult:
        """Stream a video to `path` (.mp4 or .gif). On Ctrl-C the file is closed with every frame so far.

        fps / scale (integer upscaling in the file) default to the model's (tiny: 12 fps, x4).
        """
        path = check_output_path(path)
        fps = self.bundle.fps if fps is None else fps
        scale = self.bundle.render_scale if scale is None else scale
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


def load(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32, *,
         tokenizer: str | os.PathLike | None = None, unet_config=None) -> VideoGenerator:
    """Load a model into a VideoGenerator: a miga_fast bundled-model .safetensors file, a VideoCrafter2
    checkpoint (model.ckpt; `tokenizer`: folder with the CLIP vocab.json + merges.txt, default `tokenizer/`
    next to it; `unet_config`: a VC2Config, default VideoCrafter2 512 v2.0) or a diffusers Wan2.1 T2V folder.
    See `miga_fast.models.load`."""
    from .models.load import load_bundle

    bundle = load_bundle(path, device, dtype, tokenizer=tokenizer, unet_config=unet_config)
    return VideoGenerator(bundle, device=device, dtype=dtype)


def load_default(device: str = "cpu", dtype: torch.dtype = torch.float32) -> VideoGenerator:
    """The bundled model shipped in the package."""
    from .models.tiny.bundle import DEFAULT_WEIGHTS

    return load(DEFAULT_WEIGHTS, device, dtype)
