"""adaLN modulation with per-frame vectors, broadcast over the tokens of each frame.

Tokens are laid out ``[B, F, P, D]`` (``P`` = tokens per frame) and every modulation vector is
``[B, F, D]``: the broadcast happens inside the arithmetic, so no per-token modulation tensor is ever
materialised. These are the pure-PyTorch references; fused kernels replace them under the same names.
"""

from __future__ import annotations

import torch
from torch import Tensor


def adaln_modulate_ref(
    x_norm: Tensor, shift: Tensor, scale: Tensor, *, dtype: torch.dtype | None = None
) -> Tensor:
    """``x_norm * (1 + scale) + shift`` per frame: ``x_norm [B, F, P, D]``, ``shift/scale [B, F, D]``.

    The arithmetic runs in the promoted dtype of the inputs (fp32 for Wan); ``dtype`` is the result dtype
    (default: the promoted one).
    """
    out = x_norm * (1 + scale[:, :, None]) + shift[:, :, None]
    return out if dtype is None else out.to(dtype)


def gated_residual_ref(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """``x + y * gate`` per frame, summed in fp32: ``x/y [B, F, P, D]``, ``gate [B, F, D]``; x's dtype."""
    return (x.float() + y * gate[:, :, None]).to(x.dtype)
