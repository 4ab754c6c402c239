"""The Python API a library or a service calls.

    gen = miga_fast.load_default()                  # the bundled model, on the CPU
    gen = miga_fast.load("Wan2.1-T2V-1.3B-Diffusers", "cuda", torch.bfloat16)   # or VideoCrafter2/model.ckpt
    for frame in gen.stream("a red circle moving left on a striped blue background", frames=512):
        ...                                         # uint8 [H, W, 3], as soon as it is finished
    gen.render("out.mp4", prompt, frames=512)       # streams to the file; valid even after Ctrl-C
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError, EngineError, require
from .plan import MODES, PRESETS, IterationEnd, PlanConfig, preset
from .render import RenderResult, render_video
from .runtime import Engine
from .runtime.compile_cache import choose_mode, engine_key, is_warm, mark_warm
from .runtime.factory import make_engine
from .runtime.modes import ENGINE_MODES, GraphUnavailable, unavailable_reason
from .video import to_uint8


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
        self._weights_hash: str | None = None

    def weights_hash(self) -> str:
        """SHA-256 of the denoiser's, codec's and text encoder's weights (computed once; checkpoints carry it)."""
        if self._weights_hash is None:
            from .checkpoint import weights_hash

            b = self.bundle
            modules = (m for m in (b.module, b.codec, b.text) if isinstance(m, torch.nn.Module))
            self._weights_hash = weights_hash(*modules)
        return self._weights_hash

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
                                 seed=seed, device=self.device, dtype=LATENT_DTYPE, window_batch=window_batch,
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
        try:
            return preset(f"{self.family}-{mode}", **overrides)
        except ConfigError as exc:
            if not overrides:
                raise
            given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
            raise ConfigError(f"{given} does not fit the {self.family}-{mode} preset: {exc}") from exc

    def encode(self, prompt: str) -> torch.Tensor:
        """Text embedding [1, S, D] on the engine's device and dtype, computed once per prompt."""
        return self.bundle.text.encode(prompt).to(self.device, self.dtype)

    def request(self, prompt: str | None = None, frames: int | None = None, *, mode: str = "miga-stream",
                seed: int = 0, steps: int | None = None, guidance_scale: float | None = None,
                negative_prompt: str | None = None, size: tuple[int, int] | None = None,
                prompt_schedule: str | None = None, reflection: bool | None = None, window_batch: int = 0,
                overrides: dict | None = None, engine_mode: str = "auto", num_frames: int | None = None,
                num_inference_steps: int | None = None, height: int | None = None,
                width: int | None = None) -> VideoRequest:
        """Validate the arguments of one video (each error names the argument and what is allowed) and encode its
        prompts; nothing is rendered. diffusers' names are accepted too: num_frames = frames, num_inference_steps =
        steps, height / width = size; giving both spellings of one argument is an error."""
        frames = _one_of("frames", frames, "num_frames", num_frames, 256)
        steps = _one_of("steps", steps, "num_inference_steps", num_inference_steps, None)
        if height is not None or width is not None:
            hw = (self.size[0] if height is None else height, self.size[1] if width is None else width)
            size = _one_of("size", size, "height/width", hw, None)
        require(_is_int(frames) and 0 < frames <= MAX_FRAMES, "frames", f"an integer in [1, {MAX_FRAMES:,}]", frames)
        require(_is_int(seed) and 0 <= seed < 2**63, "seed", "an integer in [0, 2**63)", seed)
        require(steps is None or (_is_int(steps) and 1 <= steps <= 1000), "steps", "an integer in [1, 1000]", steps)
        g = guidance_scale
        require(g is None or (isinstance(g, int | float) and not isinstance(g, bool) and math.isfinite(g)
                              and 0 <= g <= 1000),
                "guidance_scale", "a finite number in [0, 1000] (1 = no guidance)", guidance_scale)
        require(_is_int(window_batch) and window_batch >= 0, "window_batch", "an integer >= 0", window_batch)
        require(engine_mode in ENGINE_MODES, "engine_mode", f"one of {ENGINE_MODES}", engine_mode)
        if engine_mode == "graph" and (why := unavailable_reason(self.device)):
            raise GraphUnavailable(f"engine mode 'graph' cannot run: {why}. Use 'compile' or 'eager'.")
        if size is not None:
            require(isinstance(size, tuple | list) and len(size) == 2 and all(map(_is_int, size)), "size",
                    "(H, W), two integers", size)
            size = tuple(size)
            require(0 < min(size) and max(size) <= MAX_SIDE, "size", f"(H, W) with 0 < H, W <= {MAX_SIDE}", size)
            self.bundle.latent_shape(size)  # validates the multiples
        require(negative_prompt is None or isinstance(negative_prompt, str), "negative_prompt", "a string",
                negative_prompt)
        if prompt_schedule:
            schedule = parse_prompt_schedule(prompt_schedule)
        else:
            require(isinstance(prompt, str) and prompt.strip() != "", "prompt",
                    "a non-empty string (or give prompt_schedule)", prompt)
            schedule = [(0, prompt)]
        negative = self.bundle.negative_prompt if negative_prompt is None else negative_prompt
        cfg = self.config(mode, steps, reflection, overrides)
        conds = [self.encode(p) for _, p in schedule]  # validates every prompt before any work
        guidance = self.bundle.guidance_scale if guidance_scale is None else float(guidance_scale)
        return VideoRequest(schedule, frames, cfg, seed, guidance, negative, size, window_batch, engine_mode,
                            conds, self.encode(negative))

    def stream(self, prompt: str | None = None, frames: int | None = None, *, callback: Callable[[int], None] | None
               = None, **kw) -> Iterator[np.ndarray]:
        """Yield the video's uint8 frames [H, W, 3] in order, each as soon as the codec has decoded it.

        Arguments (validated now, before any work; see `request`): mode, seed, steps, guidance_scale,
        negative_prompt, size (H, W) — these default to the model's (its official sampler's values) —,
        prompt_schedule "0:...;200:..." (switches the condition when the queue head reaches the latent of each
        frame; then `prompt` is ignored), reflection, window_batch, overrides (extra PlanConfig fields, e.g.
        {"zigzag": 1}: ablations), engine_mode; diffusers' num_frames / num_inference_steps / height / width.
        callback(frames_done) is called after every frame.
        """
        return self._stream(self.request(prompt, frames, **kw), callback)

    def _stream(self, req: VideoRequest, callback) -> Iterator[np.ndarray]:
        with self.frame_stream(req) as frames:
            for frame in frames:
                yield frame
                if callback is not None:
                    callback(frames.done)

    @contextlib.contextmanager
    def frame_stream(self, req: VideoRequest, state: dict | None = None) -> Iterator[FrameStream]:
        """A `FrameStream` of `req` on an idle engine (returned to the cache on exit); `state`: a
        `FrameStream.state()` to go on from."""
        mode, why = req.engine_mode, None
        compiled = self._compile_key(req) if mode in ("auto", "compile") else None
        if mode == "auto":
            mode, why = choose_mode(self.device, req.frames, is_warm(compiled))
        engine = self.engine(req.cfg, cond=req.conds[0], uncond=req.uncond, seed=req.seed, size=req.size,
                             guidance_scale=req.guidance_scale, window_batch=req.window_batch, engine_mode=mode)
        if why:
            engine.mode_why["auto"] = why
        stream = FrameStream(engine, req, self.bundle.codec, state)
        try:
            yield stream
        finally:  # also on an early stop (the consumer closed the stream): the engine is idle again
            stream.close()
            if compiled and engine.mode == "compile" and engine.runner.compile_seconds:
                mark_warm(compiled, {"model": type(self.model).__name__, "mode": req.cfg.mode,
                                     "compile_seconds": {str(k): v for k, v in engine.runner.compile_seconds.items()}})
            self._return_engine(engine)

    def _compile_key(self, req: VideoRequest) -> str:
        """What the compiled code of `req`'s engine depends on: the denoiser's class and parameter shapes (not their
        values: weights are graph inputs), the plan, the latent shape, CFG on/off, window batch, device, dtype."""
        params = [(n, tuple(p.shape), str(p.dtype)) for n, p in self.model.named_parameters()] if isinstance(
            self.model, torch.nn.Module) else []
        return engine_key(model=type(self.model).__name__, params=params, cfg=repr(req.cfg),
                          latent=self.bundle.latent_shape(req.size), cfg_guidance=req.guidance_scale != 1.0,
                          window_batch=req.window_batch, device=self.device.type, dtype=str(self.dtype))

    def render(self, path: str | os.PathLike, prompt: str | None = None, frames: int | None = None, *,
               fps: int | None = None, scale: int | None = None, progress: bool = True, resume: bool = False,
               checkpoint_every: int | None = None, stop: Callable[[], bool] | None = None,
               on_frame: Callable[[int, np.ndarray], None] | None = None,
               callback: Callable[[int], None] | None = None, **kw) -> RenderResult:
        """Render a video to `path` (.mp4 or .gif), resumably; arguments of the video as `stream`.

        fps / scale (integer upscaling in the file) default to the model's (tiny: 12 fps, x4).
        mp4: frames go to segment files in `<path>.ckpt/` with a checkpoint of the queue state every
        `checkpoint_every` frames (default 64; 0: no checkpoints, the file is written directly) and on SIGINT /
        SIGTERM / `stop()` returning True; `resume=True` goes on from the last checkpoint (frame for frame what an
        uninterrupted render gives). The segments are joined (no re-encoding) into `path` at the end and on an
        interruption. gif: written at the end, not resumable. on_frame(index, frame) and callback(frames_done) are
        called after every frame. See `miga_fast.render`.
        """
        req = self.request(prompt, frames, **kw)
        return render_video(self, req, path, fps=fps, scale=scale, progress=progress, resume=resume,
                            checkpoint_every=checkpoint_every, stop=stop, on_frame=on_frame, callback=callback)


# The ring's latents, solver history and noise stay fp32 whatever the model's dtype (the official samplers keep
# latents and scheduler state in fp32): a bf16 ring would round every latent to 8 mantissa bits at every step.
# The denoisers cast their input to their own weights' dtype and return x's dtype.
LATENT_DTYPE = torch.float32
MAX_FRAMES = 10**9  # a bound for typos (1e12 frames would run for centuries), not for memory: that is constant
MAX_SIDE = 8192  # frame height / width bound: a typo there would allocate the ring for a gigapixel video


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _one_of(name: str, value, alias: str, alias_value, default):
    """An argument given under our name or diffusers' (not both, unless equal); else `default`."""
    if value is not None and alias_value is not None and value != alias_value:
        raise ConfigError(f"{name} and {alias} name the same argument: give one (got {value!r} and {alias_value!r})")
    return default if value is None and alias_value is None else value if value is not None else alias_value


@dataclass(frozen=True)
class VideoRequest:
    """One video's validated arguments (model defaults resolved) and its encoded prompts."""

    schedule: list  # [(frame, prompt)], starting at frame 0
    frames: int
    cfg: PlanConfig
    seed: int
    guidance_scale: float
    negative_prompt: str
    size: tuple[int, int] | None
    window_batch: int
    engine_mode: str
    conds: list  # [1, S, D] per schedule entry
    uncond: torch.Tensor

    def settings(self) -> dict:
        """What fixes the video besides the model and the plan config (checkpoints compare it)."""
        return {"schedule": [list(x) for x in self.schedule], "frames": self.frames, "seed": self.seed,
                "guidance_scale": self.guidance_scale, "negative_prompt": self.negative_prompt,
                "size": None if self.size is None else list(self.size), "window_batch": self.window_batch,
                "engine_mode": self.engine_mode}


class FrameStream:
    """The uint8 frames [H, W, 3] of one video, in order, from an engine run and a streaming decoder.

    `done`: frames yielded so far. Right after the last frame of a latent is yielded (`at_latent_end`), the run is
    between latents and `state()` holds everything needed to go on exactly: the engine's snapshot, the decoder's
    state, the frames done and the prompt-schedule position (a `FrameStream(..., state)` goes on from it).
    """

    def __init__(self, engine: Engine, req: VideoRequest, codec, state: dict | None = None):
        self.engine, self.req, self.codec = engine, req, codec
        cfg = req.cfg
        self._head_offset = cfg.padding + cfg.num_steps - cfg.window if cfg.mode == "fifo" else 0
        self._starts = [codec.latent_of(start) for start, _ in req.schedule]  # schedule frames -> latents
        self.decoder = codec.stream_decoder()
        self.done, self.prompt_index, self.at_latent_end = 0, 0, False
        resume = None
        if state is not None:
            from .runtime.engine import EngineState

            resume = EngineState(**state["engine"])
            self.decoder.load_state(state["decoder"])
            self.done, self.prompt_index = int(state["frames"]), int(state["prompt_index"])
            engine.set_condition(req.conds[self.prompt_index], req.uncond)
        self._run = engine.run(codec.latents_for(req.frames), on_event=self._switch_prompt, resume=resume)
        self._it = self._frames()

    def _switch_prompt(self, event) -> None:
        if isinstance(event, IterationEnd) and len(self._starts) > 1:
            latent = event.queue[self.req.cfg.padding] - self._head_offset
            k = max(i for i, start in enumerate(self._starts) if start <= max(latent, 0))
            if k != self.prompt_index:
                self.prompt_index = k
                self.engine.set_condition(self.req.conds[k], self.req.uncond)

    def _frames(self) -> Iterator[np.ndarray]:
        total = self.req.frames
        with torch.no_grad():
            for latent in self._run:
                decoded = self.decoder.push(latent)[: total - self.done]
                for i, frame in enumerate(decoded):
                    self.done += 1
                    self.at_latent_end = i == len(decoded) - 1
                    yield to_uint8(frame)
                if self.done == total:
                    return
            self.at_latent_end = False  # the end: nothing to go on from
            for frame in self.decoder.flush()[: total - self.done]:
                self.done += 1
                yield to_uint8(frame)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._it

    def __next__(self) -> np.ndarray:
        return next(self._it)

    def state(self) -> dict:
        """Host data to go on from (valid when `at_latent_end`); its size is fixed by the ring."""
        if not self.at_latent_end:
            raise EngineError("FrameStream.state() is only valid right after the last frame of a latent")
        return {"engine": vars(self.engine.snapshot()), "decoder": self.decoder.state(), "frames": self.done,
                "prompt_index": self.prompt_index}

    def close(self) -> None:
        self._it.close()
        self._run.close()


def check_device(device: str | torch.device) -> torch.device:
    """A torch device that exists on this machine, else a ConfigError naming `device` and what is available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1' (got {device!r})") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device must be 'cpu' on this machine: CUDA is not available (torch {torch.__version__}, "
                          f"torch.cuda.is_available() = False; got {str(device)!r})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device must be one of cuda:0 .. cuda:{torch.cuda.device_count() - 1} (got {device!r})")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]' (got {device!r})")
    return dev


def load(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32, *,
         tokenizer: str | os.PathLike | None = None, unet_config=None) -> VideoGenerator:
    """Load a model into a VideoGenerator: a miga_fast bundled-model .safetensors file, a VideoCrafter2
    checkpoint (model.ckpt; `tokenizer`: folder with the CLIP vocab.json + merges.txt, default `tokenizer/`
    next to it; `unet_config`: a VC2Config, default VideoCrafter2 512 v2.0) or a diffusers Wan2.1 T2V folder.
    See `miga_fast.models.load`."""
    from .models.load import load_bundle

    device = check_device(device)
    bundle = load_bundle(path, device, dtype, tokenizer=tokenizer, unet_config=unet_config)
    return VideoGenerator(bundle, device=device, dtype=dtype)


def load_default(device: str = "cpu", dtype: torch.dtype = torch.float32) -> VideoGenerator:
    """The bundled model shipped in the package."""
    from .models.tiny.bundle import DEFAULT_WEIGHTS

    return load(DEFAULT_WEIGHTS, device, dtype)
