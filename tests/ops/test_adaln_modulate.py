"""adaln_modulate (fused LayerNorm + per-frame modulation): Triton (interpreter) and C++ vs the reference."""

import pytest
import torch
import torch.nn.functional as F

from miga_fast.ops import backend as fused_backend
from miga_fast.ops.adaln_modulate import adaln_modulate, adaln_modulate_ref

from .conftest import DTYPES, TOL, opcheck_utils

# [B, F, P, D]: single token, primes, D not a power of two / above one block row, a scaled-down Wan window
# (CFG batch 2, 5 latent frames, 3 x 4 patches, dim 48)
SHAPES = [(1, 1, 1, 1), (1, 3, 7, 37), (2, 2, 5, 130), (2, 5, 12, 48)]


def inputs(shape, dtype, mod_dtype=torch.float32):
    B, F, P, D = shape
    x = (3 * torch.randn(shape) + 1).to(dtype)
    # the DiT's per-frame vectors come out of a [B, F, 6, D] tensor: strided views, never made contiguous
    mod = torch.randn(B, F, 6, D).to(mod_dtype)
    return x, mod[:, :, 0], mod[:, :, 1]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1e-6, None])
def test_matches_reference(kernel_backend, shape, dtype, eps):
    x, shift, scale = inputs(shape, dtype)
    out = adaln_modulate(x, shift, scale, eps=eps, dtype=dtype, backend=kernel_backend)
    ref = adaln_modulate_ref(x, shift, scale, eps=eps, dtype=dtype)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])


@pytest.mark.parametrize("mod_dtype", [torch.float16, torch.bfloat16])
def test_half_modulation_promotes(kernel_backend, mod_dtype):
    """Without dtype= the result has the reference's promoted dtype; the kernels widen every input first while
    the reference rounds ``1 + scale`` in the half dtype, so compare with the reference on widened inputs."""
    x, shift, scale = inputs((1, 2, 3, 20), torch.float16, mod_dtype)
    out = adaln_modulate(x, shift, scale, backend=kernel_backend)
    assert out.dtype == adaln_modulate_ref(x, shift, scale).dtype
    ref = adaln_modulate_ref(x.float(), shift.float(), scale.float())
    torch.testing.assert_close(out.float(), ref, **TOL[out.dtype])


def test_eps_is_wan_fp32_layer_norm_then_modulate():
    """``eps=`` means Wan's parameter-free fp32 LayerNorm first (its norm1/norm3/norm_out), bit for bit."""
    x, shift, scale = inputs((2, 3, 4, 16), torch.float32)
    old = adaln_modulate_ref(F.layer_norm(x.float(), x.shape[-1:], eps=1e-6), shift, scale, dtype=x.dtype)
    assert torch.equal(adaln_modulate(x, shift, scale, eps=1e-6, dtype=x.dtype, backend="ref"), old)


def test_opcheck(kernel_backend):
    x, shift, scale = inputs((1, 2, 3, 20), torch.float32)
    if kernel_backend == "cpp":
        op = torch.ops.miga_fast.adaln_modulate.default
    else:
        from miga_fast.kernels.adaln_modulate import adaln_modulate_triton as op
    for eps, dtype in [(1e-6, None), (None, torch.float16)]:
        name = "adaln_modulate" + ("_triton" if kernel_backend == "triton" else "")
        torch.library.opcheck(op, (x, shift, scale, eps, dtype), test_utils=opcheck_utils(name))


@pytest.mark.parametrize("which", ["ref", "triton", "cpp"])
def test_compiles_without_graph_breaks(which, request):
    if which == "cpp":
        request.getfixturevalue("cpp_extension")
    x, shift, scale = inputs((1, 2, 3, 20), torch.float32)

    def block(x, shift, scale):
        return adaln_modulate(x, shift, scale, eps=1e-6, backend=which) * 2

    # the Triton interpreter cannot run under AOT tracing: check dynamo's graph capture alone for it
    compiled = torch.compile(block, fullgraph=True, backend="eager" if which == "triton" else "aot_eager")
    torch.testing.assert_close(compiled(x, shift, scale), 2 * adaln_modulate_ref(x, shift, scale, eps=1e-6))


def test_auto_dispatch_and_forced_backends(monkeypatch):
    x, shift, scale = inputs((1, 1, 2, 8), torch.float32)
    monkeypatch.delenv(fused_backend.ENV_VAR, raising=False)
    expected = "cpp" if fused_backend.extension_loaded() else "ref"
    assert fused_backend.resolve("adaln_modulate", x.device, (x.dtype,)) == expected
    # float64 has no kernel: the reference takes it
    assert fused_backend.resolve("adaln_modulate", x.device, (torch.float64,)) == "ref"
    out = adaln_modulate(x.double(), shift.double(), scale.double(), eps=1e-6)
    assert out.dtype == torch.float64
    monkeypatch.setenv(fused_backend.ENV_VAR, "ref")
    assert fused_backend.resolve("adaln_modulate", x.device, (x.dtype,)) == "ref"
    monkeypatch.setenv(fused_backend.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="MIGA_FAST_BACKEND must be one of"):
        adaln_modulate(x, shift, scale)
    with pytest.raises(RuntimeError, match="'cpp' .*forced by backend=.*CPU tensors"):
        adaln_modulate(x.to("meta"), shift.to("meta"), scale.to("meta"), backend="cpp")
    with pytest.raises(RuntimeError, match="float32/float16/bfloat16"):
        adaln_modulate(x.double(), shift, scale, backend="triton")


def test_rejects_per_token_vectors():
    x, shift, scale = inputs((1, 2, 3, 8), torch.float32)
    with pytest.raises(ValueError, match=r"shift/scale \[B, F, D\]"):
        adaln_modulate(x, shift[:, :, None].expand(-1, -1, 3, -1), scale, backend="ref")


@pytest.mark.gpu
def test_cuda_auto_dispatch_under_inductor():
    """CUDA picks the Triton kernel; inductor compiles around it (run with TRITON_INTERPRET=0 for real kernels)."""
    x, shift, scale = (t.cuda() for t in inputs((2, 5, 12, 48), torch.bfloat16))
    assert fused_backend.resolve("adaln_modulate", x.device, (x.dtype,)) == "triton"
    fn = torch.compile(lambda x, s, c: adaln_modulate(x, s, c, eps=1e-6, dtype=x.dtype), fullgraph=True)
    ref = adaln_modulate_ref(x, shift, scale, eps=1e-6, dtype=x.dtype)
    torch.testing.assert_close(fn(x, shift, scale).float(), ref.float(), **TOL[torch.bfloat16])
