"""TensorRT engines of the denoiser: built from the ONNX export, cached on disk, called like the engine's denoiser.

* `Profile`: one optimization profile (min/opt/max shape per input). `profile_for_kind` gives the static
  profile of an engine step kind (the denoiser sees B windows, 2B with CFG, of F frames), so an engine
  with one profile per kind runs each kind with shapes fixed at build time.
* `CacheKey`: what a built engine depends on: the weights (hash of the ONNX file and its external data),
  the profiles, the precision, the GPU architecture and the library versions. A changed key is a new
  file name, so a stale engine is never loaded.
* `build_engine` (cache hit: no TensorRT import) and `TRTDenoiser` (`denoise(x, t, context) -> pred`).

TensorRT is imported lazily; without it these raise ImportError("... pip install tensorrt ...").
UNVERIFIED without a GPU: `build_engine`'s TensorRT calls, `TRTDenoiser` (deserialization, one execution
context per profile, tensor addresses, `execute_async_v3`) and `gpu_arch`; the pure-Python parts (profiles,
shape selection, cache keys, hashing) are unit-tested on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .onnx import INPUTS, OUTPUT, DenoiserShape

INSTALL_HINT = ("TensorRT is not installed: pip install tensorrt (an NVIDIA GPU with a CUDA driver is needed to "
                "build or run engines)")

Shape = tuple[int, ...]


def require_tensorrt():
    """The `tensorrt` module, or ImportError with the install hint."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return tensorrt


@dataclass(frozen=True)
class Profile:
    """An optimization profile: `inputs` = ((name, min, opt, max), ...) shapes, one entry per ONNX input."""

    name: str
    inputs: tuple[tuple[str, Shape, Shape, Shape], ...]

    def __post_init__(self):
        for name, lo, opt, hi in self.inputs:
            if not (len(lo) == len(opt) == len(hi)) or any(not 1 <= a <= b <= c for a, b, c in zip(lo, opt, hi,
                                                                                                 strict=True)):
                raise ConfigError(f"profile {self.name!r}, input {name!r}: need 1 <= min <= opt <= max per axis "
                                  f"(got min {lo}, opt {opt}, max {hi})")

    def covers(self, shapes: Mapping[str, Shape]) -> bool:
        """Whether concrete input `shapes` (name -> shape) lie within this profile."""
        for name, lo, _, hi in self.inputs:
            s = tuple(shapes[name])
            if len(s) != len(lo) or any(not a <= v <= c for a, v, c in zip(lo, s, hi, strict=True)):
                return False
        return True

    def to_json(self) -> dict:
        return {"name": self.name, "inputs": [[n, list(a), list(b), list(c)] for n, a, b, c in self.inputs]}


def static_profile(name: str, shapes: Mapping[str, Shape]) -> Profile:
    """min = opt = max = `shapes` (one fixed window shape)."""
    return Profile(name, tuple((n, tuple(shapes[n]), tuple(shapes[n]), tuple(shapes[n])) for n in INPUTS))


def profile_for_kind(key, shape: DenoiserShape) -> Profile:
    """Static profile of an engine step kind (`runtime.step.StepKey`): the denoiser input is B windows (2B with
    CFG) of F frames; sizes other than (batch, frames) come from `shape`."""
    batch = key.batch * (2 if key.cfg else 1)
    full = DenoiserShape(batch, shape.channels, key.frames, shape.height, shape.width, shape.text_len, shape.text_dim)
    return static_profile(f"b{batch}f{key.frames}", full.shapes())


def profiles_for_kinds(keys, shape: DenoiserShape) -> list[Profile]:
    """One profile per distinct denoiser shape among `keys` (kinds differing only in noise/renoise/held writes
    call the denoiser with the same shapes), ordered by (batch, frames)."""
    unique = {p.name: p for p in (profile_for_kind(k, shape) for k in keys)}
    return [unique[n] for n in sorted(unique, key=lambda n: tuple(int(v) for v in n[1:].split("f")))]


def dynamic_frames_profile(shape: DenoiserShape, lo: int, hi: int) -> Profile:
    """F in [lo, hi] (opt: the export's F), every other axis fixed: for an ONNX exported with dynamic_frames."""
    lo_s, opt_s, hi_s = shape.shapes(lo), shape.shapes(), shape.shapes(hi)
    return Profile(f"b{shape.batch}f{lo}-{hi}", tuple((n, lo_s[n], opt_s[n], hi_s[n]) for n in INPUTS))


def select_profile(profiles: list[Profile], shapes: Mapping[str, Shape]) -> int:
    """Index of the first profile covering `shapes`; ValueError naming the profiles otherwise."""
    for i, p in enumerate(profiles):
        if p.covers(shapes):
            return i
    raise ValueError(f"no TensorRT optimization profile covers inputs {dict(shapes)}; the engine was built for "
                     f"{[p.name for p in profiles]} (rebuild with a profile for this step kind)")


def weights_hash(onnx_path: str | Path) -> str:
    """sha256 of the ONNX file and its external-data side file (`<file>.data`, as torch.onnx writes it)."""
    h = hashlib.sha256()
    path = Path(onnx_path)
    for part in (path, path.with_name(path.name + ".data")):
        if part.is_file():
            h.update(part.name.encode())
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions a serialized engine depends on (TensorRT, CUDA as torch sees it, torch)."""
    import torch

    try:
        trt = require_tensorrt().__version__
    except ImportError:
        trt = "missing"
    return {"tensorrt": trt, "cuda": str(torch.version.cuda), "torch": torch.__version__}


def gpu_arch(device: int | None = None) -> str:
    """Compute capability of the current (or given) CUDA device, e.g. "sm_90". UNVERIFIED without a GPU."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("gpu_arch needs a CUDA device (TensorRT engines are specific to a GPU architecture)")
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


@dataclass(frozen=True)
class CacheKey:
    """Everything a built engine depends on; `digest` changes when any part does."""

    weights: str
    profiles: tuple[Profile, ...]
    dtype: str
    gpu_arch: str
    versions: tuple[tuple[str, str], ...]

    @classmethod
    def make(cls, weights: str, profiles, dtype: str, gpu_arch: str, versions: Mapping[str, str]) -> CacheKey:
        return cls(weights, tuple(profiles), dtype, gpu_arch, tuple(sorted(versions.items())))

    def to_json(self) -> dict:
        return {"weights": self.weights, "profiles": [p.to_json() for p in self.profiles], "dtype": self.dtype,
                "gpu_arch": self.gpu_arch, "versions": dict(self.versions)}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:24]

    def filename(self) -> str:
        return f"denoiser-{self.gpu_arch}-{self.dtype}-{self.digest()}.plan"


PRECISIONS = ("float32", "float16", "bfloat16")


def build_engine(onnx_path: str | Path, profiles: list[Profile], *, cache_dir: str | Path, dtype: str = "float16",
                 workspace_bytes: int | None = None, arch: str | None = None,
                 versions: Mapping[str, str] | None = None) -> Path:
    """Serialized engine for `onnx_path` with `profiles` (in this order), from the cache or built into it.

    dtype: precision TensorRT may use inside the engine ("float16"/"bfloat16" enable those kernels; the I/O
    tensors keep the ONNX dtype, float32). UNVERIFIED without a GPU (everything past the cache lookup).
    """
    if dtype not in PRECISIONS:
        raise ConfigError(f"dtype must be one of {PRECISIONS} (got {dtype!r})")
    if not profiles:
        raise ConfigError("build_engine needs at least one optimization profile")
    key = CacheKey.make(weights_hash(onnx_path), profiles, dtype, arch or gpu_arch(),
                        versions if versions is not None else library_versions())
    cache_dir = Path(cache_dir)
    plan = cache_dir / key.filename()
    if plan.is_file():
        return plan
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if dtype == "float16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif dtype == "bfloat16":
        config.set_flag(trt.BuilderFlag.BF16)
    for p in profiles:
        profile = builder.create_optimization_profile()
        for name, lo, opt, hi in p.inputs:
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = plan.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan)  # atomic: a concurrent reader never sees half an engine
    plan.with_suffix(".json").write_text(json.dumps(key.to_json(), indent=1))
    return plan


class TRTDenoiser:
    """`denoise(x [B, C, F, H, W], t [B, F], context [B, S, D]) -> pred` on CUDA tensors via a TensorRT engine.

    `profiles` must be the list the engine was built with (same order): each call runs on the execution
    context of the first profile covering its shapes (one context per profile, created on first use, so
    alternating step kinds never re-selects a profile). UNVERIFIED without a GPU.
    """

    def __init__(self, plan_path: str | Path, profiles: list[Profile]):
        import torch

        trt = require_tensorrt()
        self._torch = torch
        self.profiles = list(profiles)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan_path} (built for another GPU or TensorRT version?)")
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise ValueError(f"{plan_path} has {self.engine.num_optimization_profiles} profiles, "
                             f"{len(self.profiles)} were given")
        self._contexts: dict[int, object] = {}

    def _context(self, index: int):
        ctx = self._contexts.get(index)
        if ctx is None:
            ctx = self._contexts[index] = self.engine.create_execution_context()
            ctx.set_optimization_profile_async(index, self._torch.cuda.current_stream().cuda_stream)
        return ctx

    def __call__(self, x, t, context):
        torch = self._torch
        inputs = {"x": x.float().contiguous(), "t": t.float().contiguous(), "context": context.float().contiguous()}
        ctx = self._context(select_profile(self.profiles, {n: tuple(v.shape) for n, v in inputs.items()}))
        out = torch.empty(inputs["x"].shape, device=x.device, dtype=torch.float32)
        for name, tensor in inputs.items():
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        ctx.set_tensor_address(OUTPUT, out.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return out.to(x.dtype)

    denoise = __call__
