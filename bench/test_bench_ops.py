"""pytest-benchmark suite of the fused ops: each op's reference, torch.compile of the reference and the kernels that
can run here, on the scaled-down shapes of bench/bench_<op>.py (their cases and provider factories, reused).

    pytest bench/ --benchmark-only                            # this file + test_bench_step.py
    pytest bench/test_bench_ops.py --benchmark-only -k adaln --benchmark-columns=median,iqr,ops

Not part of the test suite (pyproject's testpaths is tests/). Every provider is called once before timing (the
compile provider compiles there). The C++ kernels are built on the fly (cached in $TMPDIR) when not installed;
Triton runs only on CUDA (its CPU interpreter is for correctness, not speed). Real model shapes: the scripts'
``--all``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytest_benchmark")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_adaln_modulate  # noqa: E402
import bench_gated_residual  # noqa: E402
import bench_hetero_attention  # noqa: E402
import bench_solver_update  # noqa: E402
from common import VC2, WAN_MINI, WAN_TINY  # noqa: E402

from miga_fast.ops import backend as fused_backend  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROVIDERS = ("ref", "compile", "cpp", "triton")

OPS = {
    "adaln_modulate": (bench_adaln_modulate, [bench_adaln_modulate.case(WAN_TINY),
                                              bench_adaln_modulate.case(WAN_MINI)]),
    "gated_residual": (bench_gated_residual, [bench_gated_residual.case(WAN_TINY),
                                              bench_gated_residual.case(WAN_MINI)]),
    "hetero_attention": (bench_hetero_attention, [c for c in bench_hetero_attention.CASES if not c.big]),
    "solver_update": (bench_solver_update, [bench_solver_update.case(VC2, "ddim"),
                                            bench_solver_update.case(WAN_MINI, "euler")]),
}
PARAMS = [pytest.param(op, i, provider, id=f"{op}-{case.config}-{case.shape}-{provider}".replace(" ", "_"))
          for op, (_, cases) in OPS.items() for i, case in enumerate(cases) for provider in PROVIDERS]


def provider_fn(module, provider: str):
    """The bench script's factory: inputs -> zero-argument callable."""
    if provider == "ref":
        return module.ref
    if provider == "compile":
        return module.compiled
    return module.kernel(provider)


def skip_reason(provider: str) -> str | None:
    if provider == "triton" and DEVICE.type != "cuda":
        return "Triton timings need CUDA (the CPU interpreter is for correctness only)"
    if provider == "cpp":
        if DEVICE.type != "cpu":
            return "the C++ kernels take CPU tensors"
        if not fused_backend.load_extension():
            try:
                fused_backend.build_extension()
            except Exception as exc:  # no compiler / headers
                return f"C++ extension not built and building failed: {str(exc)[-300:]}"
    if provider in ("cpp", "triton"):
        return fused_backend.unavailable_reason(provider, DEVICE)
    return None


@pytest.mark.parametrize("op,index,provider", PARAMS)
def test_op(benchmark, op, index, provider):
    module, cases = OPS[op]
    case = cases[index]
    reason = skip_reason(provider)
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    inputs = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in case.make(torch.float32).items()}
    fn = provider_fn(module, provider)(inputs)
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)

    def call():
        fn()
        sync()

    benchmark.group = f"{op} {case.config} {case.shape}"
    benchmark.extra_info.update(op=op, config=case.config, shape=case.shape, provider=provider, device=str(DEVICE))
    with torch.no_grad():
        call()  # warm-up (compiles)
        benchmark(call)
