"""Shape checks, shape (fake) functions, dtype rules and constants of the fused ops, shared by the dispatchers
``miga_fast.ops.<op>`` and their Triton kernels ``miga_fast.kernels.<op>``.

Import rule, so no cycle can form: kernels import shapes; ops import shapes and, lazily, kernels (this module
imports torch only, never ``miga_fast``). The fake functions serve both the C++ ops
(``backend.register_cpp_fake``) and the Triton ops (``register_fake``); they return empty tensors of the
kernels' output layout and raise ValueError on bad shapes, as the kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "SHORT_MAX",
    "adaln_modulate_fake",
    "adaln_modulate_out_dtype",
    "check_adaln_modulate",
    "check_gated_residual",
    "check_hetero_attention",
    "check_solver_update",
    "flat_rows",
    "gated_residual_fake",
    "hetero_attention_fake",
    "solver_update_fake",
]


# --- adaln_modulate: x [B, F, P, D], shift/scale [B, F, D] -> [B, F, P, D] ---------------------------------------


def check_adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor) -> None:
    """``x [B, F, P, D]`` and per-frame ``shift/scale [B, F, D]``, else ValueError."""
    if x.dim() != 4 or shift.shape != (x.shape[0], x.shape[1], x.shape[3]) or scale.shape != shift.shape:
        raise ValueError(
            f"adaln_modulate: x must be [B, F, P, D] and shift/scale [B, F, D] "
            f"(got {tuple(x.shape)}, {tuple(shift.shape)}, {tuple(scale.shape)})"
        )


def adaln_modulate_out_dtype(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float | None, dtype: torch.dtype | None
) -> torch.dtype:
    """``dtype``, else the promoted dtype of (normalised x, shift, scale), as ``adaln_modulate_ref``."""
    if dtype is not None:
        return dtype
    # with eps the reference normalises in fp32, so x enters the promotion as fp32
    return torch.promote_types(torch.promote_types(torch.float32 if eps is not None else x.dtype, shift.dtype),
                               scale.dtype)


def adaln_modulate_fake(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Shape function of the kernels: contiguous ``[B, F, P, D]``."""
    check_adaln_modulate(x, shift, scale)
    return x.new_empty(x.shape, dtype=adaln_modulate_out_dtype(x, shift, scale, eps, dtype))


# --- gated_residual: x/y [B, F, P, D], gate [B, F, D] -> [B, F, P, D] (x's dtype) --------------------------------


def check_gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> None:
    """``x/y [B, F, P, D]`` and per-frame ``gate [B, F, D]``, else ValueError."""
    if x.dim() != 4 or y.shape != x.shape or gate.shape != (x.shape[0], x.shape[1], x.shape[3]):
        raise ValueError(
            f"gated_residual: x and y must be [B, F, P, D] and gate [B, F, D] "
            f"(got {tuple(x.shape)}, {tuple(y.shape)}, {tuple(gate.shape)})"
        )


def gated_residual_fake(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """Shape function of the kernels: contiguous ``[B, F, P, D]`` in x's dtype."""
    check_gated_residual(x, y, gate)
    return x.new_empty(x.shape)


# --- hetero_attention: q [B, H, Sq, d], k/v [B, H, Sk, d] -> [B, H, Sq - skip_queries, d] ------------------------

SHORT_MAX = 64  # sequences up to this length (keys and kept queries) take the many-sequences-per-program path


def check_hetero_attention(q: Tensor, k: Tensor, v: Tensor, skip_queries: int) -> None:
    """4-D q/k/v with matching B, H, d, k and v alike, ``0 <= skip_queries <= Sq``; else ValueError."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"hetero_attention: q must be [B, H, Sq, d] and k/v [B, H, Sk, d] "
            f"(got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)})"
        )
    if not 0 <= skip_queries <= q.shape[2]:
        raise ValueError(f"hetero_attention: skip_queries must be in [0, Sq={q.shape[2]}] (got {skip_queries})")


def hetero_attention_fake(q: Tensor, k: Tensor, v: Tensor, skip_queries: int = 0) -> Tensor:
    """Shape function of the kernels: ``[B, H, Sq', d]`` view of a contiguous ``[B, Sq', H, d]`` buffer."""
    check_hetero_attention(q, k, v, skip_queries)
    B, H, Sq, d = q.shape
    return q.new_empty((B, Sq - skip_queries, H, d)).transpose(1, 2)


# --- solver_update: ring [capacity, C, H, W]; x/pred_cond/pred_uncond [N, C, H, W] or [B, F, C, H, W];
# slots/levels/rows int [M]; noise [M, C, H, W]; c_pred/c_x/c_noise float [T]; mutates ring only ------------------


def flat_rows(t: Tensor) -> Tensor:
    """``[B, F, C, H, W]`` -> ``[B*F, C, H, W]`` (``[N, C, H, W]`` unchanged)."""
    return t.flatten(0, 1) if t.dim() == 5 else t


def check_solver_update(ring, slots, x, levels, pred_cond, pred_uncond, c_pred, c_x, c_noise, noise, rows) -> None:
    """Shapes as in the section header (see ``miga_fast.ops.solver_update``), else ValueError; value ranges are
    left to the kernels / indexing."""
    if ring.dim() != 4:
        raise ValueError(f"solver_update: ring must be [capacity, C, H, W] (got {tuple(ring.shape)})")
    plane = tuple(ring.shape[1:])
    n = flat_rows(x).shape[0] if x.dim() in (4, 5) else -1
    for name, t in (("x", x), ("pred_cond", pred_cond), ("pred_uncond", pred_uncond)):
        if t is not None and (t.dim() not in (4, 5) or tuple(t.shape[-3:]) != plane or flat_rows(t).shape[0] != n):
            raise ValueError(f"solver_update: {name} must be [N, *{plane}] or [B, F, *{plane}] with x's N rows "
                             f"(got {tuple(t.shape)})")
    m = slots.shape[0] if slots.dim() == 1 else -1
    for name, t in (("slots", slots), ("levels", levels), ("rows", rows)):
        if t is not None and (t.dim() != 1 or t.shape[0] != m or t.is_floating_point()):
            raise ValueError(f"solver_update: {name} must be an integer [M] tensor, M = len(slots) (got "
                             f"{tuple(t.shape)} {t.dtype})")
    if rows is None and m != n:
        raise ValueError(f"solver_update: without rows, slots must have one entry per row of x ({n}, got {m})")
    if (c_noise is None) != (noise is None):
        raise ValueError("solver_update: c_noise and noise go together (both or neither)")
    if noise is not None and (tuple(noise.shape[-3:]) != plane or flat_rows(noise).shape[0] != m):
        raise ValueError(f"solver_update: noise must be [M, *{plane}] (got {tuple(noise.shape)})")
    for name, t in (("c_pred", c_pred), ("c_x", c_x), ("c_noise", c_noise)):
        if t is not None and (t.dim() != 1 or t.shape != c_pred.shape):
            raise ValueError(f"solver_update: {name} must be a [T] table like c_pred (got {tuple(t.shape)})")


def solver_update_fake(ring, slots, x, levels, pred_cond, pred_uncond, guidance_scale, c_pred, c_x=None,
                       c_noise=None, noise=None, rows=None) -> None:
    """Shape function of the kernels (they only mutate ``ring``, so there is no output to shape)."""
    check_solver_update(ring, slots, x, levels, pred_cond, pred_uncond, c_pred, c_x, c_noise, noise, rows)
