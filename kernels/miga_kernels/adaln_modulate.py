"""Triton kernel of ``adaln_modulate``: LayerNorm (no affine) + per-frame modulation in one pass.

``x [B, F, P, D]``, ``shift/scale [B, F, D]`` (any strides, unit stride on D) -> ``out [B, F, P, D]`` contiguous,
``LN(x) * (1 + scale[b, f]) + shift[b, f]`` in fp32. One program = ``BLOCK_P`` tokens of one frame: the frame's
shift/scale are loaded once per program and the broadcast over tokens happens in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from miga_fast.ops.shapes import adaln_modulate_fake, adaln_modulate_out_dtype, check_adaln_modulate

from .launch import interpreter_safe, pow2, store_dtype


@triton.jit
def _adaln_modulate_kernel(
    x_ptr, shift_ptr, scale_ptr, out_ptr,
    F, P, D, sx_b, sx_f, sx_p, ss_b, ss_f, sc_b, sc_f, eps,
    NORM: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    bf = tl.program_id(1).to(tl.int64)
    b, f = bf // F, bf % F
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    shift = tl.load(shift_ptr + b * ss_b + f * ss_f + d, mask=dm, other=0.0).to(tl.float32)
    scale1 = 1.0 + tl.load(scale_ptr + b * sc_b + f * sc_f + d, mask=dm, other=0.0).to(tl.float32)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = (p < P)[:, None] & dm[None, :]
    x = tl.load(x_ptr + b * sx_b + f * sx_f + p[:, None] * sx_p + d[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    if NORM:
        # two passes over the registers: mean, then the centred variance (no cancellation)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / D
        x = xc * tl.rsqrt(var + eps)[:, None]
    out = x * scale1[None, :] + shift[None, :]
    tl.store(out_ptr + (bf * P + p[:, None]) * D + d[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton_op("miga_fast::adaln_modulate_triton", mutates_args=())
def adaln_modulate_triton(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Triton ``adaln_modulate`` (see ``miga_fast.ops.adaln_modulate``)."""
    check_adaln_modulate(x, shift, scale)
    result = adaln_modulate_out_dtype(x, shift, scale, eps, dtype)
    xk, shk, sck = interpreter_safe(x), interpreter_safe(shift), interpreter_safe(scale)
    if xk.stride(3) != 1:
        xk = xk.contiguous()
    shk, sck = (t if t.stride(2) == 1 else t.contiguous() for t in (shk, sck))
    B, F, P, D = x.shape
    out = torch.empty((B, F, P, D), device=x.device, dtype=store_dtype(x, result))
    if out.numel():
        block_d = pow2(D)
        block_p = min(pow2(P), max(1, 4096 // block_d))
        wrap_triton(_adaln_modulate_kernel)[(triton.cdiv(P, block_p), B * F)](
            xk, shk, sck, out, F, P, D, *xk.stride()[:3], *shk.stride()[:2], *sck.stride()[:2],
            0.0 if eps is None else eps, NORM=eps is not None, BLOCK_P=block_p, BLOCK_D=block_d,
            num_warps=8 if block_d * block_p >= 4096 else 4,
        )
    return out.to(result)


adaln_modulate_triton.register_fake(adaln_modulate_fake)
