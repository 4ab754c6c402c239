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
from .shapes import adaln_modulate_fake, adaln_modulate_out_dtype, check_adaln_modulate

__all__ = ["adaln_modulate", "adaln_modulate_ref"]


# the names these had before they moved to .shapes, kept importable from here
check_shapes, out_dtype = check_adaln_modulate, adaln_modulate_out_dtype


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
    check_adaln_modulate(x, shift, scale)
    dtypes = (x.dtype, shift.dtype, scale.dtype, adaln_modulate_out_dtype(x, shift, scale, eps, dtype))
    which = _backend.resolve("adaln_modulate", x.device, dtypes, backend)
    if which == "cpp":
        return torch.ops.miga_fast.adaln_modulate(x, shift, scale, eps, dtype)
    if which == "triton":
        return _triton_op()(x, shift, scale, eps, dtype)
    return adaln_modulate_ref(x, shift, scale, dtype=dtype, eps=eps)


_backend.register_cpp_fake("adaln_modulate", adaln_modulate_fake)
_backend.load_extension()
