"""The diffusers-facing call shared by `MigaWanPipeline` and `MigaVC2Pipeline`.

    frames = pipe(prompt, num_frames=1000, height=480, width=832, generator=g).frames   # as WanPipeline's
    for frame in pipe.stream(prompt, num_frames=10**6, generator=g): ...             # one frame at a time

Every video runs through `miga_fast.pipeline.VideoGenerator.stream` over a `ModelBundle` built from the pipeline's
in-memory components. That API yields uint8 frames; the float frames (and, for output_type="latent", the emitted
latents) are taken from the bundle's stream decoder by `_TeeCodec`, so outputs are not 8-bit quantised and
"latent" output decodes nothing.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
from collections import deque
from collections.abc import Iterator

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from torch import Tensor

from ..models.codecs import Codec, StreamDecoder
from ..models.load import ModelBundle
from ..models.text import CachedTextEncoder
from ..plan import MODES, PlanConfig

OUTPUT_TYPES = ("np", "pil", "pt", "latent")
# keyword arguments passed on to VideoGenerator.stream as they are; PlanConfig field names go into `overrides`
STREAM_OPTIONS = ("reflection", "window_batch", "overrides", "engine_mode")
# True inside our from_pipe: diffusers' from_pipe ends with `.to(dtype=float32)` when no dtype is given, which would
# cast (copy) a half-precision pipeline's shared modules; a drop-in keeps them as they are.
_KEEP_DTYPES = contextvars.ContextVar("miga_keep_dtypes", default=False)
PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(PlanConfig) if f.name not in ("mode", "family"))


def miga_seed(generator: torch.Generator | None) -> int:
    """The miga_fast seed of one video: one int64 in [0, 2**63 - 1) drawn from `generator` (None: from torch's
    global generator). Drawing advances the generator as diffusers' own sampling would: the same freshly seeded
    generator gives the same video, a reused one gives the next video. `VideoGenerator.stream(seed=miga_seed(g))`
    renders what the pipeline renders with `generator=g`."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device))


class _Sink:
    """Receives one video's decoded float frames [3, H, W] (or, latents_only, its latents [C, h, w])."""

    def __init__(self, latents_only: bool):
        self.latents_only = latents_only
        self.frames: deque[Tensor] = deque()
        self.latest: Tensor | None = None  # the last latent pushed, [C, h, w]
        self.latents: list[Tensor] = []


class _TeeDecoder(StreamDecoder):
    """The wrapped codec's stream decoder, copying what it pushes and returns into a `_Sink`."""

    def __init__(self, codec: _TeeCodec, sink: _Sink | None):
        self.codec, self.sink = codec, sink
        self.inner = codec.inner.stream_decoder()
        self.pushed = 0

    def push(self, latent: Tensor) -> list[Tensor]:
        k, self.pushed = self.pushed, self.pushed + 1
        sink = self.sink
        if sink is not None:
            sink.latest = latent.clone()  # the engine's ring slot is reused: keep a copy
            if sink.latents_only:  # no decode: placeholders, one per frame the latent would give
                sink.latents.append(sink.latest)
                return [torch.zeros(3, 1, 1)] * self.codec.frames_of(k)
        frames = self.inner.push(latent)
        if sink is not None:
            sink.frames.extend(frames)
        return frames

    def flush(self) -> list[Tensor]:
        if self.sink is not None and self.sink.latents_only:
            return []
        frames = self.inner.flush()
        if self.sink is not None:
            self.sink.frames.extend(frames)
        return frames

    def state(self) -> dict:
        return self.inner.state()

    def load_state(self, state: dict) -> None:
        self.inner.load_state(state)


class _TeeCodec(Codec):
    """A codec as `inner`, whose next stream decoder reports to the sink set by `expect(sink)`."""

    def __init__(self, inner: Codec):
        super().__init__()
        self.inner = inner
        self.latent_channels, self.scale_factor = inner.latent_channels, inner.scale_factor
        self.frames_per_latent = inner.frames_per_latent
        self._pending: _Sink | None = None

    def expect(self, sink: _Sink) -> None:
        """The next `stream_decoder()` (made when a stream starts) reports to `sink`."""
        self._pending = sink

    def stream_decoder(self) -> _TeeDecoder:
        sink, self._pending = self._pending, None
        return _TeeDecoder(self, sink)

    def frames_of(self, k: int) -> int:
        """How many frames latent `k` of a stream decodes to."""
        start = next(f for f in itertools.count(max(0, (k - 1) * self.frames_per_latent)) if self.latent_of(f) >= k)
        return next(n for n in itertools.count(1) if self.latent_of(start + n) > k)

    def encode(self, frames: Tensor) -> Tensor:
        return self.inner.encode(frames)

    def decode(self, latents: Tensor) -> Tensor:
        return self.inner.decode(latents)

    def latent_of(self, frame: int) -> int:
        return self.inner.latent_of(frame)

    def latents_for(self, frames: int) -> int:
        return self.inner.latents_for(frames)


class _PinnedText(CachedTextEncoder):
    """The bundle's text encoder, plus embeddings pinned under reserved keys (prompt_embeds= of one call)."""

    def __init__(self, inner: CachedTextEncoder):
        super().__init__()
        self.inner = inner
        self.pinned: dict[str, Tensor] = {}

    def encode(self, prompt: str) -> Tensor:
        hit = self.pinned.get(prompt)
        return hit if hit is not None else self.inner.encode(prompt)

    def _encode(self, prompt: str) -> Tensor:  # encode() never calls it: the inner encoder caches
        return self.inner.encode(prompt)


@dataclasses.dataclass
class _Video:
    """One video of a call: VideoGenerator.stream arguments and the embeddings handed to callbacks."""

    stream_kw: dict
    prompt_embeds: Tensor
    negative_prompt_embeds: Tensor


class MigaPipelineBase(DiffusionPipeline):
    """A diffusers pipeline whose call renders with a miga_fast queue (see the module doc and `__call__`)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    _exclude_from_cpu_offload: list[str] = []
    default_height, default_width = 480, 832  # the model family's (the bundle's) default size

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' `from_pipe` (the same module objects, no copy), keeping every module's dtype unless
        `torch_dtype` is given (diffusers' own casts them all to float32)."""
        if "torch_dtype" in kwargs or "dtype" in kwargs:
            return super().from_pipe(pipeline, **kwargs)
        token = _KEEP_DTYPES.set(True)
        try:
            return super().from_pipe(pipeline, **kwargs)
        finally:
            _KEEP_DTYPES.reset(token)

    def to(self, *args, **kwargs):
        only_dtype = not args and set(kwargs) == {"dtype"}
        return self if only_dtype and _KEEP_DTYPES.get() else super().to(*args, **kwargs)

    def _build_bundle(self) -> ModelBundle:
        """The ModelBundle over this pipeline's components (subclasses)."""
        raise NotImplementedError

    def _denoiser_dtype(self) -> torch.dtype:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ the generator
    def _video_generator(self):
        """The VideoGenerator over the current components, rebuilt (sharing every module) after a device / dtype
        change; its engines are kept between calls."""
        from ..pipeline import VideoGenerator

        key = (self.device, self._denoiser_dtype())
        cached = getattr(self, "_miga_generator", None)
        if cached is None or cached[0] != key:
            bundle = self._build_bundle()
            bundle = dataclasses.replace(bundle, codec=_TeeCodec(bundle.codec), text=_PinnedText(bundle.text))
            cached = (key, VideoGenerator(bundle, device=key[0], dtype=key[1]))
            self._miga_generator = cached
        return cached[1]

    @property
    def bundle(self) -> ModelBundle:
        """The ModelBundle the pipeline renders with (codec and text encoder wrapped, see the module doc)."""
        return self._video_generator().bundle

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in a callback to stop the video after the current frame."""
        return getattr(self, "_interrupt", False)

    # ------------------------------------------------------------------------------------------ checks
    def check_inputs(self, prompt, negative_prompt, height, width, num_frames=1, num_inference_steps=None,
                     guidance_scale=None, prompt_embeds=None, negative_prompt_embeds=None, output_type="np",
                     mode="miga-stream", callback_on_step_end_tensor_inputs=None, prompt_schedule=None,
                     num_videos_per_prompt=1):
        """diffusers' WanPipeline.check_inputs, plus the arguments it does not check: one ValueError naming the
        argument (height / width multiples: of the bundle's `size_multiple`, 16 for Wan2.1)."""
        m = self.bundle.size_multiple
        if not (_is_int(height) and _is_int(width)) or height <= 0 or width <= 0 or height % m or width % m:
            raise ValueError(f"`height` and `width` have to be divisible by {m} but are {height} and {width}.")
        if callback_on_step_end_tensor_inputs is not None and not all(
                k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs):
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, "
                             f"but found {bad}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError(f"Cannot forward both `prompt`: {prompt} and `prompt_embeds`: {prompt_embeds}. Please "
                             "make sure to only forward one of the two.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError(f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`: "
                             f"{negative_prompt_embeds}. Please make sure to only forward one of the two.")
        if prompt is None and prompt_embeds is None and prompt_schedule is None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and "
                             "`prompt_embeds` undefined.")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not (isinstance(value, str) or
                                          (isinstance(value, list) and all(isinstance(p, str) for p in value))):
                raise ValueError(f"`{name}` has to be of type `str` or `list` but is {type(value)}")
        for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if value is not None and not (isinstance(value, Tensor) and value.dim() == 3):
                raise ValueError(f"`{name}` has to be a tensor [batch, sequence, dim] but is "
                                 f"{getattr(value, 'shape', type(value))}")
        if prompt_schedule is not None and (not isinstance(prompt_schedule, str) or prompt is not None
                                            or prompt_embeds is not None):
            raise ValueError(f"`prompt_schedule` has to be a string '0:prompt a;200:prompt b' given instead of "
                             f"`prompt` / `prompt_embeds` but is {prompt_schedule!r}")
        if not _is_int(num_frames) or num_frames <= 0:
            raise ValueError(f"`num_frames` has to be a positive integer but is {num_frames!r}")
        if num_inference_steps is not None and (not _is_int(num_inference_steps) or num_inference_steps <= 0):
            raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps!r}")
        if guidance_scale is not None and (isinstance(guidance_scale, bool)
                                           or not isinstance(guidance_scale, int | float)):
            raise ValueError(f"`guidance_scale` has to be a number but is {guidance_scale!r}")
        if not _is_int(num_videos_per_prompt) or num_videos_per_prompt <= 0:
            raise ValueError(f"`num_videos_per_prompt` has to be a positive integer but is {num_videos_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` has to be one of {list(OUTPUT_TYPES)} but is {output_type!r}")
        if mode not in MODES:
            raise ValueError(f"`mode` has to be one of {list(MODES)} but is {mode!r}")

    def _videos(self, prompt, negative_prompt, height, width, num_frames, num_inference_steps, guidance_scale,
                generator, prompt_embeds, negative_prompt_embeds, output_type, mode, prompt_schedule,
                num_videos_per_prompt, callback_on_step_end_tensor_inputs, miga_options) -> list[_Video]:
        """Validate a call (before any work) and split it into videos (batch = prompts x num_videos_per_prompt)."""
        height = self.default_height if height is None else height
        width = self.default_width if width is None else width
        self.check_inputs(prompt, negative_prompt, height, width, num_frames, num_inference_steps, guidance_scale,
                          prompt_embeds, negative_prompt_embeds, output_type, mode,
                          callback_on_step_end_tensor_inputs, prompt_schedule, num_videos_per_prompt)
        stream_kw, overrides = {}, dict(miga_options.pop("overrides", None) or {})
        for key, value in miga_options.items():
            if key in STREAM_OPTIONS:
                stream_kw[key] = value
            elif key in PLAN_FIELDS:
                overrides[key] = value
            else:
                raise TypeError(f"{type(self).__name__}.__call__() got an unexpected keyword argument {key!r} "
                                f"(miga options: {STREAM_OPTIONS + PLAN_FIELDS})")
        gen = self._video_generator()
        text: _PinnedText = gen.bundle.text
        text.pinned.clear()  # embeddings of an earlier call

        def pin(embeds: Tensor, name: str, i: int) -> str:
            key = f"\x00{name}[{i}]"  # no tokenizer prompt starts with NUL: the key cannot collide with a prompt
            text.pinned[key] = embeds[i:i + 1]
            return key

        if prompt_schedule is not None:
            prompts = [None]
        elif prompt_embeds is not None:
            prompts = [pin(prompt_embeds, "prompt_embeds", i) for i in range(prompt_embeds.shape[0])]
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if negative_prompt_embeds is not None:
            negatives = [pin(negative_prompt_embeds, "negative_prompt_embeds", i)
                         for i in range(negative_prompt_embeds.shape[0])]
        else:
            negatives = [negative_prompt] if negative_prompt is None or isinstance(negative_prompt, str) \
                else list(negative_prompt)
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"`negative_prompt` has batch size {len(negatives)}, but `prompt` has batch size "
                             f"{len(prompts)}. Please make sure that passed `negative_prompt` matches the batch size "
                             "of `prompt`.")
        total = len(prompts) * num_videos_per_prompt
        generators = generator if isinstance(generator, list) else [generator] * total
        if len(generators) != total:
            raise ValueError(f"You have passed a list of generators of length {len(generators)}, but requested an "
                             f"effective batch size of {total}. Make sure the batch size matches the length of the "
                             "generators.")
        if overrides:
            stream_kw["overrides"] = overrides
        size = (height, width)
        videos = []
        pairs = [pair for pair in zip(prompts, negatives, strict=True) for _ in range(num_videos_per_prompt)]
        for (p, n), g in zip(pairs, generators, strict=True):
            kw = dict(stream_kw, prompt=p, frames=num_frames, mode=mode, seed=miga_seed(g),
                      steps=num_inference_steps, guidance_scale=guidance_scale, negative_prompt=n, size=size,
                      prompt_schedule=prompt_schedule)
            req = gen.request(**kw)  # validates now, before the first video renders (cached encodings)
            videos.append(_Video(kw, req.conds[0], req.uncond))
        return videos

    # ------------------------------------------------------------------------------------------ rendering
    def _frames(self, video: _Video, latents_only: bool) -> Iterator[tuple[Tensor | None, _Sink]]:
        """(frame [3, H, W] float in ~[-1, 1] (None if latents_only), sink) per finished frame, in order."""
        gen = self._video_generator()
        sink = _Sink(latents_only)
        stream = gen.stream(**video.stream_kw)
        try:
            gen.bundle.codec.expect(sink)  # the decoder is made at the first next(): right after this
            for _ in stream:
                yield (None if latents_only else sink.frames.popleft()), sink
                if self.interrupt:
                    return
        finally:
            stream.close()

    def _callback(self, callback, tensor_inputs, video: _Video, index: int, sink: _Sink) -> None:
        values = {"latents": sink.latest[None, :, None], "prompt_embeds": video.prompt_embeds,
                  "negative_prompt_embeds": video.negative_prompt_embeds}
        callback(self, index, torch.tensor(0), {k: values[k] for k in tensor_inputs})

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 num_frames: int = 1000, height: int | None = None, width: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 num_videos_per_prompt: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 prompt_embeds: Tensor | None = None, negative_prompt_embeds: Tensor | None = None,
                 output_type: str = "np", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None, mode: str = "miga-stream",
                 prompt_schedule: str | None = None, **miga_options):
        """Render `num_frames` frames per video with a miga_fast queue; returns `WanPipelineOutput(frames=...)`
        (or a 1-tuple if not return_dict) shaped as diffusers' WanPipeline returns them:

        - "np": float32 [batch, num_frames, H, W, 3] in [0, 1]; "pt": float32 [batch, num_frames, 3, H, W];
          "pil": `batch` lists of `num_frames` PIL images (VideoProcessor.postprocess_video, as WanPipeline);
        - "latent": the emitted latents [batch, C, latents, h, w] (normalised, as WanPipeline's), nothing decoded.

        Unlike WanPipeline, any num_frames >= 1 is rendered exactly (no rounding to 4k + 1) and memory does not grow
        with it except for the returned frames: use `stream()` for unbounded videos. Defaults (None) are the model's:
        height x width (Wan 480 x 832, VC2 320 x 512), num_inference_steps (the `mode` preset's), guidance_scale
        (Wan 5, VC2 12), negative_prompt (Wan's official one).

        generator: each video's seed is `miga_seed(generator)`: one int64 drawn from it (a list: one generator per
        video; None: torch's global generator), so a freshly seeded generator reproduces a video exactly and the
        same video comes from `VideoGenerator.stream(seed=miga_seed(torch.Generator().manual_seed(s)))`.
        callback_on_step_end(pipe, frame_index, timestep=0, {name: tensor}) runs after every finished frame
        (a step of a queue finishes no frame, so per-step calls would not be per-video steps); tensors:
        "latents" (the latent that frame came from, [1, C, 1, h, w]), "prompt_embeds", "negative_prompt_embeds";
        what it returns is ignored (the latent is already decoded); `pipe._interrupt = True` ends the video there.
        mode: "miga-stream" (constant memory) | "miga" | "fifo" (families without a preset reject it);
        prompt_schedule "0:prompt a;200:prompt b" replaces prompt; miga_options: reflection, window_batch,
        engine_mode, overrides, or any PlanConfig field (e.g. zigzag=3), see VideoGenerator.stream.
        """
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = ["latents"] if callback_on_step_end_tensor_inputs is None \
            else callback_on_step_end_tensor_inputs
        videos = self._videos(prompt, negative_prompt, height, width, num_frames, num_inference_steps,
                              guidance_scale, generator, prompt_embeds, negative_prompt_embeds, output_type, mode,
                              prompt_schedule, num_videos_per_prompt, tensor_inputs, dict(miga_options))
        self._interrupt = False
        latents_only = output_type == "latent"
        outputs = []
        for video in videos:
            frames, sink = [], None
            for i, (frame, sink) in enumerate(self._frames(video, latents_only)):
                if not latents_only:
                    frames.append(frame)
                if callback_on_step_end is not None:
                    self._callback(callback_on_step_end, tensor_inputs, video, i, sink)
            outputs.append(torch.stack(sink.latents, 1) if latents_only else torch.stack(frames, 1))
            self._interrupt = False
        if latents_only:
            result = torch.stack(outputs)  # [B, C, n, h, w]
        else:
            result = self.video_processor.postprocess_video(torch.stack(outputs).float(), output_type=output_type)
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=result) if return_dict else (result,)

    @torch.no_grad()
    def stream(self, prompt: str | None = None, negative_prompt: str | None = None, num_frames: int = 1000,
               height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
               guidance_scale: float | None = None, generator: torch.Generator | None = None,
               prompt_embeds: Tensor | None = None, negative_prompt_embeds: Tensor | None = None,
               output_type: str = "np", mode: str = "miga-stream", prompt_schedule: str | None = None,
               **miga_options) -> Iterator:
        """One video's frames, each as soon as it is decoded (what callback_on_step_end cannot do), in constant
        memory for any num_frames: np float32 [H, W, 3] in [0, 1], pt float32 [3, H, W], or a PIL image.
        Arguments as `__call__` (one prompt, one generator); they are validated now, before the first frame."""
        if output_type == "latent":
            raise ValueError("`output_type` has to be one of ['np', 'pil', 'pt'] for stream() (no per-frame "
                             "latents: use __call__(output_type='latent')) but is 'latent'")
        if isinstance(prompt, list) or isinstance(negative_prompt, list) or isinstance(generator, list) or (
                prompt_embeds is not None and prompt_embeds.dim() == 3 and prompt_embeds.shape[0] != 1):
            raise ValueError("`prompt` has to be one prompt for stream() (one video); call it once per prompt")
        (video,) = self._videos(prompt, negative_prompt, height, width, num_frames, num_inference_steps,
                                guidance_scale, generator, prompt_embeds, negative_prompt_embeds, output_type, mode,
                                prompt_schedule, 1, None, dict(miga_options))
        return self._stream(video, output_type)

    def _stream(self, video: _Video, output_type: str) -> Iterator:
        self._interrupt = False
        for frame, _ in self._frames(video, False):
            yield self.video_processor.postprocess(frame[None].float(), output_type=output_type)[0]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)

