"""``hetero_attention``: attention over a window of frames at different noise levels, skipping the query rows
of leading read-only context frames.

``q [B, H, Sq, d]``, ``k/v [B, H, Sk, d]`` -> ``[B, H, Sq - skip_queries, d]`` =
``SDPA(q[:, :, skip_queries:], k, v)`` (scale ``d ** -0.5``, no mask): keys and values always cover every row.
The noise levels do not enter the attention itself (they act through the per-frame adaLN), so "hetero" windows
need no mask; what they allow is dropping the queries of context frames. With tokens in frame order
(``S = F * P``) and the first ``m`` frames context, ``skip_queries = m * P``.

When skipping is exact: the op returns exactly the non-skipped rows of full attention, so it is exact for any
single attention call whose first ``skip_queries`` output rows are discarded by the caller. In a multi-layer
DiT that holds for the LAST block only (the context rows' outputs of block ``l`` are the hidden states that
block ``l + 1`` turns into keys/values, so every earlier block must compute them; the last block's context
outputs only reach the discarded part of the final projection, and from that block on the caller must carry
only the non-context rows, e.g. slice the residual stream to ``x[:, m:]``). Likewise for a solver step that
writes only the non-context frames of the window.

Layouts: any strides with a unit stride on ``d`` (e.g. the ``[B, S, H, d].transpose(1, 2)`` views of
``WanAttention``, or VC2 temporal attention's ``[B*H'*W', F, heads, d]`` sequences with S = F = 16..21); the
kernels write a ``[B, Sq', H, d]`` buffer and return its ``transpose(1, 2)`` view, so the caller's
``out.transpose(1, 2).flatten(2)`` is free. Short sequences (``Sk, Sq' <= 64``: VC2 temporal attention) use a
kernel that packs many sequences per program. Drop-in for ``attention(q, k, v)`` with ``skip_queries=0``.

Backends (``backend=`` / ``$MIGA_FAST_BACKEND``, see ``miga_fast.ops.backend``): ``ref`` =
``hetero_attention_ref`` (SDPA), ``triton`` = op ``miga_fast::hetero_attention_triton``, ``cpp`` = op
``miga_fast::hetero_attention``. Automatic choice on CPU: SDPA (faster there than the C++ kernel, which
stays available by name). Inference only (no autograd formula).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backend as _backend
from .shapes import SHORT_MAX, check_hetero_attention, hetero_attention_fake

__all__ = ["hetero_attention", "hetero_attention_ref", "SHORT_MAX"]


def hetero_attention_ref(q: Tensor, k: Tensor, v: Tensor, *, skip_queries: int = 0) -> Tensor:
    """``SDPA(q[:, :, skip_queries:], k, v)``: ``q [B, H, Sq, d], k/v [B, H, Sk, d] -> [B, H, Sq - skip, d]``."""
    return F.scaled_dot_product_attention(q[:, :, skip_queries:], k, v)


# the name this had before it moved to .shapes, kept importable from here
check_shapes = check_hetero_attention


def _triton_op():
    from miga_fast.kernels.hetero_attention import hetero_attention_triton  # imports triton: first use only

    return hetero_attention_triton


def hetero_attention(q: Tensor, k: Tensor, v: Tensor, *, skip_queries: int = 0, backend: str | None = None) -> Tensor:
    """Attention of the query rows ``skip_queries:`` over all keys: ``-> [B, H, Sq - skip_queries, d]``."""
    check_hetero_attention(q, k, v, skip_queries)
    # On CPU, SDPA (MKL GEMM tiles) is ~1.7x faster than the C++ kernel on long sequences and ~10-25% faster
    # on VC2's short ones (bench/results/hetero_attention.csv): the automatic CPU choice is SDPA.
    which = _backend.resolve("hetero_attention", q.device, (q.dtype, k.dtype, v.dtype), backend,
                             cpu_order=("ref",))
    if which != "ref" and not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"hetero_attention: q, k, v must share one dtype (got {q.dtype}, {k.dtype}, {v.dtype})")
    if which == "cpp":
        return torch.ops.miga_fast.hetero_attention(q, k, v, skip_queries)
    if which == "triton":
        return _triton_op()(q, k, v, skip_queries)
    return hetero_attention_ref(q, k, v, skip_queries=skip_queries)


_backend.register_cpp_fake("hetero_attention", hetero_attention_fake)
_backend.load_extension()
