"""``adaln_modulate``: fused LayerNorm (no affine) + per-frame adaLN modulation of ``[B, F, P, D]`` tokens.

``out = LN(x) * (1 + scale[b, f]) + shift[b, f]`` with ``shift/scale [B, F, D]`` broadcast over the P tokens of
each frame inside the kernel (never expanded per token); without ``eps`` x is taken as already normalised.
Math in fp32; the result has ``dtype`` (default: the promoted dtype, fp32 with ``eps``). WanBlock calls
``adaln_modulate(x, shift, scale, eps=eps, dtype=x.dtype)`` (its fp32 norm1/norm3/norm_out + modulation).

Backends (``backend=`` / ``$MIGA_FAST_BACKEND``, see ``miga_fast.ops.backend``): ``ref`` =
``adaln_modulate_ref``, ``triton`` = op ``miga_fast::adaln_modulate_triton``, ``cpp`` = op
``miga_fast::adaln_modulate``. Inference only (no autograd formula).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backend as _backend
from .adaln import adaln_modulate_ref

__all__ = ["adaln_modulate", "adaln_modulate_ref"]


def check_shapes(x: Tensor, shift: Tensor, scale: Tensor) -> None:
    """``x [B, F, P, D]`` and per-frame ``shift/scale [B, F, D]``, else ValueError."""
    if x.dim() != 4 or shift.shape != (x.shape[0], x.shape[1], x.shape[3]) or scale.shape != shift.shape:
        raise ValueError(
            f"adaln_modulate: x must be [B, F, P, D] and shift/scale [B, F, D] "
            f"(got {tuple(x.shape)}, {tuple(shift.shape)}, {tuple(scale.shape)})"
        )


def out_dtype(x: Tensor, shift: Tensor, scale: Tensor, eps: float | None, dtype: torch.dtype | None) -> torch.dtype:
    """``dtype``, else the promoted dtype of (normalised x, shift, scale), as ``adaln_modulate_ref``."""
    if dtype is not None:
        return dtype
    return torch.promote_types(torch.promote_types(torch.float32 if eps is not None else x.dtype, shift.dtype),
                               scale.dtype)


def adaln_modulate_fake(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Shape function of the kernels: contiguous ``[B, F, P, D]``."""
    check_shapes(x, shift, scale)
    return x.new_empty(x.shape, dtype=out_dtype(x, shift, scale, eps, dtype))


def _triton_op():
    from miga_fast.kernels.adaln_modulate import adaln_modulate_triton  # imports triton: first use only

    return adaln_modulate_triton


def adaln_modulate(
    x: Tensor,
    shift: Tensor,
    scale: Tensor,
    *,
    eps: float | None = None,
    dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> Tensor:
    """``LN(x) * (1 + scale) + shift`` per frame: ``x [B, F, P, D]``, ``shift/scale [B, F, D]`` -> ``[B, F, P, D]``."""
    check_shapes(x, shift, scale)
    dtypes = (x.dtype, shift.dtype, scale.dtype, out_dtype(x, shift, scale, eps, dtype))
    which = _backend.resolve("adaln_modulate", x.device, dtypes, backend)
    if which == "cpp":
        return torch.ops.miga_fast.adaln_modulate(x, shift, scale, eps, dtype)
    if which == "triton":
        return _triton_op()(x, shift, scale, eps, dtype)
    return adaln_modulate_ref(x, shift, scale, dtype=dtype, eps=eps)


_backend.register_cpp_fake("adaln_modulate", adaln_modulate_fake)
_backend.load_extension()
