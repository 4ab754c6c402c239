"""Triton kernel of ``solver_update`` (see ``miga_fast.ops.solver_update``): CFG combine + affine solver step,
stored in place into the ring.

One program = BLOCK values of one (output, channel) H*W plane: grid ``(cdiv(H*W, BLOCK), C, M)``, so no integer
division per element. Every operand is addressed as rows ``n = b * F + f`` of a ``[B, F, C, H*W]`` view
(``F = 1`` for ``[N, C, H, W]`` tensors), which covers the engine's permuted ``[B, F, C, H, W]`` predictions
without a copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from miga_fast.ops.shapes import check_solver_update, solver_update_fake

from .launch import interpreted, interpreter_safe, pow2


@triton.jit
def _solver_update_kernel(
    ring_ptr, slots_ptr, levels_ptr, rows_ptr, x_ptr, c_ptr, u_ptr, n_ptr, cpred_ptr, cx_ptr, cnoise_ptr,
    g, C, HW,
    x_f, x_so, x_si, x_sc, c_f, c_so, c_si, c_sc, u_f, u_so, u_si, u_sc, n_f, n_so, n_si, n_sc,
    HAS_ROWS: tl.constexpr, HAS_UNCOND: tl.constexpr, HAS_CX: tl.constexpr, HAS_NOISE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    s = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    sm = s < HW
    ch = tl.program_id(1).to(tl.int64)
    m = tl.program_id(2).to(tl.int64)
    slot = tl.load(slots_ptr + m)
    t = tl.load(levels_ptr + m)
    r = tl.load(rows_ptr + m) if HAS_ROWS else m
    xv = tl.load(x_ptr + (r // x_f) * x_so + (r % x_f) * x_si + ch * x_sc + s, mask=sm).to(tl.float32)
    pred = tl.load(c_ptr + (r // c_f) * c_so + (r % c_f) * c_si + ch * c_sc + s, mask=sm).to(tl.float32)
    if HAS_UNCOND:
        uv = tl.load(u_ptr + (r // u_f) * u_so + (r % u_f) * u_si + ch * u_sc + s, mask=sm).to(tl.float32)
        pred = uv + g * (pred - uv)
    if HAS_CX:
        xv = tl.load(cx_ptr + t) * xv
    out = xv + tl.load(cpred_ptr + t) * pred
    if HAS_NOISE:
        nv = tl.load(n_ptr + (m // n_f) * n_so + (m % n_f) * n_si + ch * n_sc + s, mask=sm).to(tl.float32)
        out = out + tl.load(cnoise_ptr + t) * nv
    tl.store(ring_ptr + (slot * C + ch) * HW + s, out.to(ring_ptr.dtype.element_ty), mask=sm)


def _layout(t: Tensor | None, like: Tensor) -> tuple[Tensor, int, int, int, int]:
    """``t`` (or a stand-in when absent) as rows of ``[B, F, C, H*W]``: (tensor, F, s_outer, s_inner, s_c)."""
    if t is None:
        return like, 1, 0, 0, 0
    t = interpreter_safe(t)
    h, w = t.shape[-2:]
    if t.stride(-1) != 1 or (h > 1 and t.stride(-2) != w):
        t = t.contiguous()
    if t.dim() == 5:
        return t, t.shape[1], t.stride(0), t.stride(1), t.stride(2)
    return t, 1, t.stride(0), 0, t.stride(1)


@triton_op("miga_fast::solver_update_triton", mutates_args={"ring"})
def solver_update_triton(
    ring: Tensor,
    slots: Tensor,
    x: Tensor,
    levels: Tensor,
    pred_cond: Tensor,
    pred_uncond: Tensor | None,
    guidance_scale: float,
    c_pred: Tensor,
    c_x: Tensor | None = None,
    c_noise: Tensor | None = None,
    noise: Tensor | None = None,
    rows: Tensor | None = None,
) -> None:
    """Triton ``solver_update`` (see ``miga_fast.ops.solver_update``)."""
    check_solver_update(ring, slots, x, levels, pred_cond, pred_uncond, c_pred, c_x, c_noise, noise, rows)
    if not ring.is_contiguous():
        raise ValueError("solver_update: ring must be contiguous")
    M, C = slots.shape[0], ring.shape[1]
    HW = ring.shape[2] * ring.shape[3]
    if M == 0 or C * HW == 0:
        return
    # fp32 copy of a bf16 ring under the interpreter (see kernels.launch.interpreter_safe)
    target = ring.float() if interpreted(ring) and ring.dtype == torch.bfloat16 else ring
    index = [t.to(torch.int64).contiguous() for t in (slots, levels, slots if rows is None else rows)]
    tables = [t.to(torch.float32).contiguous() for t in (c_pred, c_pred if c_x is None else c_x,
                                                         c_pred if c_noise is None else c_noise)]
    operands = [_layout(t, target) for t in (x, pred_cond, pred_uncond, noise)]
    block = min(pow2(HW), 1024)
    wrap_triton(_solver_update_kernel)[(triton.cdiv(HW, block), C, M)](
        target, *index, *(o[0] for o in operands), *tables, float(guidance_scale), C, HW,
        *(v for o in operands for v in o[1:]),
        HAS_ROWS=rows is not None, HAS_UNCOND=pred_uncond is not None, HAS_CX=c_x is not None,
        HAS_NOISE=noise is not None, BLOCK=block, num_warps=4,
    )
    if target is not ring:
        ring.copy_(target)


solver_update_triton.register_fake(solver_update_fake)
