"""Launch helpers shared by the Triton kernels of ``miga_fast.kernels`` (this package imports triton)."""

from __future__ import annotations

import torch
from torch import Tensor

# fp32 matmuls use full IEEE precision (not TF32) so results match the references; fp16/bf16 tiles take the
# target's default (tensor cores, fp32 accumulation).
DOT_PRECISION = {torch.float32: "ieee", torch.float16: None, torch.bfloat16: None}


def interpreted(t: Tensor) -> bool:
    """CPU tensors reach a Triton kernel only under ``TRITON_INTERPRET=1`` (the interpreter)."""
    return t.device.type == "cpu"


def interpreter_safe(t: Tensor | None) -> Tensor | None:
    """bf16 CPU tensors as fp32: the interpreter rounds bf16 stores wrongly (numpy has no bf16), so the
    kernels see fp32 there and the caller narrows the result with torch's correct rounding."""
    if t is not None and interpreted(t) and t.dtype == torch.bfloat16:
        return t.float()
    return t


def store_dtype(like: Tensor, dtype: torch.dtype) -> torch.dtype:
    """Dtype a kernel writes for a ``dtype`` result: fp32 for bf16 under the interpreter (see above)."""
    return torch.float32 if interpreted(like) and dtype == torch.bfloat16 else dtype


def pow2(n: int, floor: int = 1) -> int:
    """Smallest power of two >= max(n, floor) (Triton block shapes must be powers of two)."""
    n = max(int(n), floor)
    return 1 << (n - 1).bit_length()
