"""Shared helpers of the fused-op tests: per-dtype tolerances, opcheck sub-tests (fixtures: tests/conftest.py)."""

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Kernels and references both compute in fp32 and round once to the output dtype: 1-2 ulp of it apart.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def opcheck_utils(op_name: str) -> list[str]:
    """opcheck sub-tests to run: under the interpreter a Triton kernel cannot run inside AOT tracing."""
    tests = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    if op_name.endswith("_triton"):
        tests.remove("test_aot_dispatch_dynamic")
    return tests
