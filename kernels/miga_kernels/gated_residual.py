"""Triton kernel of ``gated_residual``: ``x + gate[b, f] * y`` over ``[B, F, P, D]`` tokens, fp32 sum, x's dtype.

``x/y [B, F, P, D]`` (any strides, unit stride on D), ``gate [B, F, D]`` -> contiguous ``[B, F, P, D]``. One
program = ``BLOCK_P`` tokens of one frame; the frame's gate is loaded once per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from miga_fast.ops.shapes import check_gated_residual, gated_residual_fake

from .launch import interpreter_safe, pow2, store_dtype


@triton.jit
def _gated_residual_kernel(
    x_ptr, y_ptr, gate_ptr, out_ptr,
    F, P, D, sx_b, sx_f, sx_p, sy_b, sy_f, sy_p, sg_b, sg_f,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    bf = tl.program_id(1).to(tl.int64)
    b, f = bf // F, bf % F
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    gate = tl.load(gate_ptr + b * sg_b + f * sg_f + d, mask=dm, other=0.0).to(tl.float32)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = (p < P)[:, None] & dm[None, :]
    x = tl.load(x_ptr + b * sx_b + f * sx_f + p[:, None] * sx_p + d[None, :], mask=mask, other=0.0)
    y = tl.load(y_ptr + b * sy_b + f * sy_f + p[:, None] * sy_p + d[None, :], mask=mask, other=0.0)
    out = x.to(tl.float32) + gate[None, :] * y.to(tl.float32)
    tl.store(out_ptr + (bf * P + p[:, None]) * D + d[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton_op("miga_fast::gated_residual_triton", mutates_args=())
def gated_residual_triton(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """Triton ``gated_residual`` (see ``miga_fast.ops.gated_residual``)."""
    check_gated_residual(x, y, gate)
    xk, yk, gk = (interpreter_safe(t) for t in (x, y, gate))
    xk, yk = (t if t.stride(3) == 1 else t.contiguous() for t in (xk, yk))
    gk = gk if gk.stride(2) == 1 else gk.contiguous()
    B, F, P, D = x.shape
    out = torch.empty((B, F, P, D), device=x.device, dtype=store_dtype(x, x.dtype))
    if out.numel():
        block_d = pow2(D)
        block_p = min(pow2(P), max(1, 4096 // block_d))
        wrap_triton(_gated_residual_kernel)[(triton.cdiv(P, block_p), B * F)](
            xk, yk, gk, out, F, P, D, *xk.stride()[:3], *yk.stride()[:3], *gk.stride()[:2],
            BLOCK_P=block_p, BLOCK_D=block_d, num_warps=8 if block_d * block_p >= 4096 else 4,
        )
    return out.to(x.dtype)


gated_residual_triton.register_fake(gated_residual_fake)
