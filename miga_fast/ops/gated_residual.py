"""``gated_residual``: ``x + gate[b, f] * y`` over ``[B, F, P, D]`` tokens, one fused pass.

``gate [B, F, D]`` is broadcast over the P tokens of each frame inside the kernel. Summed in fp32, result in
x's dtype. Drop-in for the Wan call sites: ``gated_residual_ref(x, y, gate)`` -> ``gated_residual(x, y, gate)``.

Backends (``backend=`` / ``$MIGA_FAST_BACKEND``, see ``miga_fast.ops.backend``): ``ref`` =
``gated_residual_ref``, ``triton`` = op ``miga_fast::gated_residual_triton``, ``cpp`` = op
``miga_fast::gated_residual``. Inference only (no autograd formula).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backend as _backend
from .adaln import gated_residual_ref
from .shapes import check_gated_residual, gated_residual_fake

__all__ = ["gated_residual", "gated_residual_ref"]


# the name this had before it moved to .shapes, kept importable from here
check_shapes = check_gated_residual


def _triton_op():
    from miga_fast.kernels.gated_residual import gated_residual_triton  # imports triton: first use only

    return gated_residual_triton


def gated_residual(x: Tensor, y: Tensor, gate: Tensor, *, backend: str | None = None) -> Tensor:
    """``x + gate * y`` per frame: ``x/y [B, F, P, D]``, ``gate [B, F, D]`` -> ``[B, F, P, D]`` (x's dtype)."""
    check_gated_residual(x, y, gate)
    which = _backend.resolve("gated_residual", x.device, (x.dtype, y.dtype, gate.dtype), backend)
    if which == "cpp":
        return torch.ops.miga_fast.gated_residual(x, y, gate)
    if which == "triton":
        return _triton_op()(x, y, gate)
    return gated_residual_ref(x, y, gate)


_backend.register_cpp_fake("gated_residual", gated_residual_fake)
_backend.load_extension()
