"""Shared fixtures of the fused-op tests: backends to test, the C++ extension, per-dtype tolerances."""

import pytest
import torch

from miga_fast.ops import backend as fused_backend

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Kernels and references both compute in fp32 and round once to the output dtype: 1-2 ulp of it apart.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


@pytest.fixture(scope="session")
def cpp_extension():
    """Load the C++ kernels: the library built by setup.py, else build csrc/ now (cached in $TMPDIR)."""
    if fused_backend.load_extension():
        return
    try:
        fused_backend.build_extension()
    except Exception as exc:  # no compiler / headers: the C++ tests cannot run here
        pytest.skip(f"C++ extension not built and building it failed: {str(exc)[-500:]}")


@pytest.fixture(params=["triton", "cpp"])
def kernel_backend(request):
    """Each kernel backend that can run on CPU tensors here (Triton: under TRITON_INTERPRET=1)."""
    if request.param == "cpp":
        request.getfixturevalue("cpp_extension")
    reason = fused_backend.unavailable_reason(request.param, torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"{request.param} backend: {reason}")
    return request.param


def opcheck_utils(op_name: str) -> list[str]:
    """opcheck sub-tests to run: under the interpreter a Triton kernel cannot run inside AOT tracing."""
    tests = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    if op_name.endswith("_triton"):
        tests.remove("test_aot_dispatch_dynamic")
    return tests
