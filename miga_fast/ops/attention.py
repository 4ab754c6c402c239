"""The one attention dispatch point: ``attention(q, k, v)`` over ``[B, heads, S, head_dim]`` tensors.

Backends:
  * ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``; works everywhere (reference).
  * ``"flash"``: the flash-attn package; CUDA, fp16/bf16 only.
  * ``"xformers"``: ``xformers.ops.memory_efficient_attention``; CUDA only.

Without a choice, CUDA tensors use flash-attn, then xformers, when installed, and everything else uses
SDPA. ``backend=`` or the ``MIGA_FAST_ATTN`` environment variable forces one and fails loudly when it
cannot run. flash-attn and xformers are imported inside the functions that call them, never at import.

Under ``torch.compile`` (the engine compiles with ``fullgraph=True``) the automatic choice keeps only backends
dynamo can trace: flash-attn registers its kernels as torch custom ops from 2.6 on (older versions are opaque
Python calls that graph-break, i.e. fail a fullgraph compile); xformers' ``memory_efficient_attention`` is
not traceable either. There SDPA is chosen, which on CUDA runs its own flash / memory-efficient kernels.
UNVERIFIED without a GPU: which flash-attn / xformers versions actually compile.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("sdpa", "flash", "xformers")
ENV_VAR = "MIGA_FAST_ATTN"


def attention_ref(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention, scale ``D ** -0.5``: ``q [B, H, Sq, D], k/v [B, H, Sk, D] -> [B, H, Sq, D]``."""
    return F.scaled_dot_product_attention(q, k, v)


def _flash(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn import flash_attn_func

    # flash-attn wants [B, S, H, D]
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _xformers(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from xformers.ops import memory_efficient_attention

    # xformers wants [B, S, H, D]
    out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


_KERNELS = {"sdpa": attention_ref, "flash": _flash, "xformers": _xformers}
_PACKAGES = {"flash": "flash_attn", "xformers": "xformers"}


@functools.cache
def _installed(package: str) -> bool:
    # find_spec does not import the package, so a broken CUDA install cannot break module import.
    return importlib.util.find_spec(package) is not None


@functools.cache
def _version(package: str) -> tuple[int, ...]:
    """(major, minor) of an installed distribution, (0,) when unknown; read from metadata, no import."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version(package.replace("_", "-"))
    except PackageNotFoundError:
        return (0,)
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def compile_unsafe_reason(backend: str) -> str | None:
    """Why ``backend`` would break a ``fullgraph=True`` torch.compile, or None when dynamo can trace it."""
    if backend == "flash" and _version("flash_attn") < (2, 6):
        return f"flash-attn {'.'.join(map(str, _version('flash_attn')))} < 2.6 has no torch custom ops"
    if backend == "xformers":
        return "xformers' memory_efficient_attention is not traceable by dynamo"
    return None


def unavailable_reason(backend: str, q: Tensor) -> str | None:
    """Why ``backend`` cannot run on tensors like ``q``, or None when it can."""
    if backend == "sdpa":
        return None
    if q.device.type != "cuda":
        return f"it needs CUDA tensors (got device {q.device.type!r})"
    if backend == "flash" and q.dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs float16/bfloat16 (got {q.dtype})"
    if not _installed(_PACKAGES[backend]):
        return f"the {_PACKAGES[backend]!r} package is not installed"
    return None


def resolve_backend(q: Tensor, backend: str | None = None) -> str:
    """Backend ``attention`` uses for ``q``: ``backend``, else ``$MIGA_FAST_ATTN``, else the best one."""
    source = "backend="
    if backend is None and os.environ.get(ENV_VAR):
        backend, source = os.environ[ENV_VAR], ENV_VAR
    if backend is None:
        compiling = torch.compiler.is_compiling()
        return next(b for b in ("flash", "xformers", "sdpa") if unavailable_reason(b, q) is None
                    and not (compiling and compile_unsafe_reason(b)))
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} (got {backend!r})")
    reason = unavailable_reason(backend, q)
    if reason is not None:
        raise RuntimeError(f"attention backend {backend!r} (forced by {source}) cannot run: {reason}")
    return backend


def attention(q: Tensor, k: Tensor, v: Tensor, *, backend: str | None = None) -> Tensor:
    """Non-causal, unmasked attention: ``q [B, H, Sq, D], k/v [B, H, Sk, D] -> [B, H, Sq, D]``."""
    return _KERNELS[resolve_backend(q, backend)](q, k, v)
