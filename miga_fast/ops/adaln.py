"""adaLN modulation with per-frame vectors, broadcast over the tokens of each frame.

Tokens are laid out ``[B, F, P, D]`` (``P`` = tokens per frame) and every modulation vector is
``[B, F, D]``: the broadcast happens inside the arithmetic, so no per-token modulation tensor is ever
materialised. These are the pure-PyTorch references of the fused ops ``miga_fast.ops.adaln_modulate`` and
``miga_fast.ops.gated_residual`` (Triton / C++ kernels under the same names).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def adaln_modulate_ref(
    x_norm: Tensor, shift: Tensor, scale: Tensor, *, dtype: torch.dtype | None = None, eps: float | None = None
) -> Tensor:
    """``x_norm * (1 + scale) + shift`` per frame: ``x_norm [B, F, P, D]``, ``shift/scale [B, F, D]``.

    With ``eps``, ``x_norm`` is first normalised here: LayerNorm over D without affine, in fp32 (Wan's
    ``norm1``/``norm2``/``norm_out``), i.e. ``layernorm_modulate_ref``. The arithmetic runs in the promoted
    dtype of the (normalised) inputs (fp32 for Wan); ``dtype`` is the result dtype (default: the promoted one).
    """
    if eps is not None:
        x_norm = F.layer_norm(x_norm.float(), x_norm.shape[-1:], eps=eps)
    out = x_norm * (1 + scale[:, :, None]) + shift[:, :, None]
    return out if dtype is None else out.to(dtype)


def layernorm_modulate_ref(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float, *, dtype: torch.dtype | None = None
) -> Tensor:
    """``LayerNorm(x, eps) * (1 + scale) + shift`` per frame, fp32 math: ``x [B, F, P, D]``, ``shift/scale
    [B, F, D]``; the reference of the fused ``adaln_modulate(..., eps=eps)``."""
    return adaln_modulate_ref(x, shift, scale, dtype=dtype, eps=eps)


def gated_residual_ref(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """``x + y * gate`` per frame, summed in fp32: ``x/y [B, F, P, D]``, ``gate [B, F, D]``; x's dtype."""
    return (x.float() + y * gate[:, :, None]).to(x.dtype)
