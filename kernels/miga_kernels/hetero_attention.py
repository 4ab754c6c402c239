"""Triton kernels of ``hetero_attention`` (see ``miga_fast.ops.hetero_attention``).

* ``_attn_long``: flash attention forward (online softmax in exp2, fp32 accumulators); one program = BLOCK_M
  query rows of one (batch, head), streaming BLOCK_N keys at a time. Query rows start at ``skip_queries``.
* ``_attn_short``: many short sequences per program (VC2 temporal attention: ``[B*H'*W', heads, 16..21, d]``,
  hundreds of thousands of sequences): one program = SEQS whole sequences, scores ``[SEQS, Lq, Lk]`` from one
  batched ``tl.dot``; a one-sequence-per-program flash kernel would leave most of each tile empty.

Both take any strides with a unit stride on d and write a contiguous ``[B, Sq', H, d]`` buffer.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from miga_fast.ops.shapes import SHORT_MAX, check_hetero_attention, hetero_attention_fake

from .launch import DOT_PRECISION, interpreter_safe, pow2, store_dtype

LOG2E = 1.4426950408889634


@triton.jit
def _attn_long(
    q_ptr, k_ptr, v_ptr, o_ptr,
    sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h, so_s,
    H, Sq_out, Sk, skip, d, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dd = tl.arange(0, BLOCK_D)
    dm = dd < d
    row_mask = (rows < Sq_out)[:, None] & dm[None, :]
    q = tl.load(q_ptr + b * sq_b + h * sq_h + (skip + rows)[:, None] * sq_s + dd[None, :], mask=row_mask, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    for start in range(0, Sk, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cm = cols < Sk
        kt = tl.load(k_base + cols[None, :] * sk_s + dd[:, None], mask=cm[None, :] & dm[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # log2 domain: exp2 below
        s = tl.where(cm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + cols[:, None] * sv_s + dd[None, :], mask=cm[:, None] & dm[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + b * so_b + h * so_h + rows[:, None] * so_s + dd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=row_mask)


@triton.jit
def _attn_short(
    q_ptr, k_ptr, v_ptr, o_ptr,
    sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h, so_s,
    H, NSEQ, Sq_out, Sk, skip, d, qk_scale,
    SEQS: tl.constexpr, BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64) * SEQS + tl.arange(0, SEQS)  # sequence ids b * H + h
    nm = n < NSEQ
    b, h = n // H, n % H
    iq = tl.arange(0, BLOCK_LQ)
    ik = tl.arange(0, BLOCK_LK)
    dd = tl.arange(0, BLOCK_D)
    dm = dd < d
    q_mask = nm[:, None, None] & (iq < Sq_out)[None, :, None] & dm[None, None, :]
    q = tl.load(q_ptr + (b * sq_b + h * sq_h)[:, None, None] + (skip + iq)[None, :, None] * sq_s + dd[None, None, :],
                mask=q_mask, other=0.0)
    km = ik < Sk
    kt = tl.load(k_ptr + (b * sk_b + h * sk_h)[:, None, None] + dd[None, :, None] + ik[None, None, :] * sk_s,
                 mask=nm[:, None, None] & dm[None, :, None] & km[None, None, :], other=0.0)  # [SEQS, d, Lk]
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # [SEQS, Lq, Lk], log2 domain
    s = tl.where(km[None, None, :], s, float("-inf"))
    p = tl.exp2(s - tl.max(s, axis=2)[:, :, None])
    l_i = tl.sum(p, axis=2)
    v = tl.load(v_ptr + (b * sv_b + h * sv_h)[:, None, None] + ik[None, :, None] * sv_s + dd[None, None, :],
                mask=nm[:, None, None] & km[None, :, None] & dm[None, None, :], other=0.0)  # [SEQS, Lk, d]
    out = tl.dot(p.to(v.dtype), v, input_precision=PRECISION) / l_i[:, :, None]
    tl.store(o_ptr + (b * so_b + h * so_h)[:, None, None] + iq[None, :, None] * so_s + dd[None, None, :],
             out.to(o_ptr.dtype.element_ty), mask=q_mask)


@triton_op("miga_fast::hetero_attention_triton", mutates_args=())
def hetero_attention_triton(q: Tensor, k: Tensor, v: Tensor, skip_queries: int = 0) -> Tensor:
    """Triton ``hetero_attention`` (see ``miga_fast.ops.hetero_attention``)."""
    check_hetero_attention(q, k, v, skip_queries)
    qk, kk, vk = (interpreter_safe(t) for t in (q, k, v))
    qk, kk, vk = (t if t.stride(3) == 1 else t.contiguous() for t in (qk, kk, vk))
    B, H, Sq, d = q.shape
    Sk, Sq_out = k.shape[2], Sq - skip_queries
    out = torch.empty((B, Sq_out, H, d), device=q.device, dtype=store_dtype(q, q.dtype)).transpose(1, 2)
    if out.numel() == 0:
        return out
    qk_scale = LOG2E / math.sqrt(d)
    # tl.dot needs every block dimension >= 16
    block_d = pow2(d, 16)
    strides = (*qk.stride()[:3], *kk.stride()[:3], *vk.stride()[:3], *out.stride()[:3])
    precision = DOT_PRECISION[qk.dtype]
    if Sk <= SHORT_MAX and Sq_out <= SHORT_MAX:
        block_lq, block_lk = pow2(Sq_out, 16), pow2(Sk, 16)
        # ~4K values per operand tile and program (4 x 16 x 64 for VC2); not yet tuned on a GPU
        seqs = max(1, min(16, 4096 // (max(block_lq, block_lk) * block_d)))
        wrap_triton(_attn_short)[(triton.cdiv(B * H, seqs),)](
            qk, kk, vk, out, *strides, H, B * H, Sq_out, Sk, skip_queries, d, qk_scale,
            SEQS=seqs, BLOCK_LQ=block_lq, BLOCK_LK=block_lk, BLOCK_D=block_d, PRECISION=precision, num_warps=4,
        )
    else:
        block_m = 64 if Sq_out > 32 else pow2(Sq_out, 16)
        block_n = 64 if block_d <= 128 else 32
        wrap_triton(_attn_long)[(triton.cdiv(Sq_out, block_m), B * H)](
            qk, kk, vk, out, *strides, H, Sq_out, Sk, skip_queries, d, qk_scale,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision, num_warps=4, num_stages=2,
        )
    return out.to(q.dtype)


hetero_attention_triton.register_fake(hetero_attention_fake)
