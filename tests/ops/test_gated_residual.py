"""gated_residual (x + gate[frame] * y): Triton (interpreter) and C++ vs the reference."""

import pytest
import torch

from miga_fast.ops.gated_residual import gated_residual, gated_residual_ref

from .conftest import DTYPES, TOL, opcheck_utils

SHAPES = [(1, 1, 1, 1), (1, 3, 7, 37), (2, 2, 5, 130), (2, 5, 12, 48)]


def inputs(shape, dtype, y_dtype=None):
    B, F, P, D = shape
    x = torch.randn(shape).to(dtype)
    y = torch.randn(shape).to(y_dtype or dtype)
    gate = torch.randn(B, F, 6, D)[:, :, 2]  # fp32 strided view, as WanBlock's gate1/gate2
    return x, y, gate


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(kernel_backend, shape, dtype):
    x, y, gate = inputs(shape, dtype)
    out = gated_residual(x, y, gate, backend=kernel_backend)
    ref = gated_residual_ref(x, y, gate)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])


def test_mixed_dtypes_and_strided_y(kernel_backend):
    """y in another dtype and non-contiguous (an attention output view) is read in place."""
    x, _, gate = inputs((2, 3, 5, 24), torch.float32)
    y = torch.randn(2, 3, 24, 5, dtype=torch.bfloat16).transpose(2, 3)
    torch.testing.assert_close(gated_residual(x, y, gate, backend=kernel_backend), gated_residual_ref(x, y, gate))


def test_opcheck(kernel_backend):
    x, y, gate = inputs((1, 2, 3, 20), torch.float32)
    if kernel_backend == "cpp":
        op, name = torch.ops.miga_fast.gated_residual.default, "gated_residual"
    else:
        from miga_fast.kernels.gated_residual import gated_residual_triton as op

        name = "gated_residual_triton"
    torch.library.opcheck(op, (x, y, gate), test_utils=opcheck_utils(name))


@pytest.mark.parametrize("which", ["ref", "triton", "cpp"])
def test_compiles_without_graph_breaks(which, request):
    if which == "cpp":
        request.getfixturevalue("cpp_extension")
    x, y, gate = inputs((1, 2, 3, 20), torch.float32)

    def block(x, y, gate):
        return gated_residual(x, y.relu(), gate, backend=which)

    compiled = torch.compile(block, fullgraph=True, backend="eager" if which == "triton" else "aot_eager")
    torch.testing.assert_close(compiled(x, y, gate), gated_residual_ref(x, y.relu(), gate))


def test_rejects_mismatched_shapes():
    x, y, gate = inputs((1, 2, 3, 8), torch.float32)
    with pytest.raises(ValueError, match=r"gate \[B, F, D\]"):
        gated_residual(x, y, gate[:, :1], backend="ref")


@pytest.mark.gpu
def test_cuda_auto_dispatch_under_inductor():
    x, y, gate = (t.cuda() for t in inputs((2, 5, 12, 48), torch.bfloat16))
    fn = torch.compile(lambda x, y, g: gated_residual(x, y, g), fullgraph=True)
    torch.testing.assert_close(fn(x, y, gate).float(), gated_residual_ref(x, y, gate).float(), **TOL[torch.bfloat16])
