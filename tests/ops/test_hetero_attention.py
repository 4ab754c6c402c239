"""hetero_attention: Triton (interpreter) and C++ vs SDPA, long windows and VC2-style short sequences."""

import pytest
import torch
import torch.nn.functional as F

from miga_fast.ops.hetero_attention import hetero_attention, hetero_attention_ref

from .conftest import DTYPES, opcheck_utils

# Softmax-weighted averages of O(1) values: compared with fp32 SDPA on the same (rounded) inputs.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
# (B, H, S, d, skip_queries)
LONG = [
    (1, 1, 65, 8, 0),  # one past the short path, a single head
    (2, 3, 100, 40, 0),  # d = 40 (VC2 head size at 320 channels / 8 heads)
    (1, 2, 100, 32, 40),  # scaled-down Wan window: 5 frames x 20 tokens, first 2 frames context
    (1, 1, 131, 128, 67),  # prime S, Wan's head_dim, a partial last query block
]
# VC2 temporal attention: [B*H'*W', heads, frames, d], frames 16..21
SHORT = [(37, 3, 16, 40, 0), (5, 2, 17, 64, 0), (9, 1, 21, 40, 4), (3, 1, 1, 8, 0), (4, 2, 2, 16, 1)]


def qkv(B, H, S, d, dtype):
    # laid out [B, S, H, d] and viewed [B, H, S, d], as WanAttention and VC2's temporal attention pass them
    return [torch.randn(B, S, H, d).to(dtype).transpose(1, 2) for _ in range(3)]


def check(backend, shape, dtype):
    B, H, S, d, skip = shape
    q, k, v = qkv(B, H, S, d, dtype)
    out = hetero_attention(q, k, v, skip_queries=skip, backend=backend)
    ref = hetero_attention_ref(q.float(), k.float(), v.float(), skip_queries=skip)
    assert out.shape == (B, H, S - skip, d) and out.dtype == dtype
    # [B, S', H, d] storage: the caller's out.transpose(1, 2).flatten(2) is a view
    assert out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])


@pytest.mark.parametrize("shape", LONG)
@pytest.mark.parametrize("dtype", DTYPES)
def test_long_windows_match_sdpa(kernel_backend, shape, dtype):
    check(kernel_backend, shape, dtype)


@pytest.mark.parametrize("shape", SHORT)
@pytest.mark.parametrize("dtype", DTYPES)
def test_short_sequences_match_sdpa(kernel_backend, shape, dtype):
    check(kernel_backend, shape, dtype)


def test_skip_equals_discarding_rows(kernel_backend):
    """skip_queries returns exactly the kept rows of full attention (same kernel, same numbers)."""
    q, k, v = qkv(1, 2, 80, 16, torch.float32)
    full = hetero_attention(q, k, v, backend=kernel_backend)
    torch.testing.assert_close(hetero_attention(q, k, v, skip_queries=32, backend=kernel_backend), full[:, :, 32:])
    torch.testing.assert_close(hetero_attention(q, k, v, skip_queries=80, backend=kernel_backend), full[:, :, 80:])


def test_skip_is_only_valid_in_the_last_layer():
    """Two stacked attention layers: skipping context queries in the last one is exact; skipping them in the
    first one (keeping the context rows' stale inputs as the next layer's keys) is not (see the module doc)."""
    x = torch.randn(1, 1, 60, 16)
    skip = 24

    def layer(h, skip_queries=0):
        return hetero_attention(h, h, h, skip_queries=skip_queries, backend="ref")

    exact = layer(layer(x))[:, :, skip:]
    torch.testing.assert_close(layer(layer(x), skip_queries=skip), exact)
    stale = torch.cat([x[:, :, :skip], layer(x, skip_queries=skip)], dim=2)
    assert (layer(stale, skip_queries=skip) - exact).abs().max() > 1e-3


def test_opcheck(kernel_backend):
    for shape in [(1, 2, 70, 16, 6), (3, 2, 5, 8, 1)]:  # long and short path
        B, H, S, d, skip = shape
        q, k, v = qkv(B, H, S, d, torch.float32)
        if kernel_backend == "cpp":
            op, name = torch.ops.miga_fast.hetero_attention.default, "hetero_attention"
        else:
            from miga_fast.kernels.hetero_attention import hetero_attention_triton as op

            name = "hetero_attention_triton"
        torch.library.opcheck(op, (q, k, v, skip), test_utils=opcheck_utils(name))


@pytest.mark.parametrize("which", ["ref", "triton", "cpp"])
def test_compiles_without_graph_breaks(which, request):
    if which == "cpp":
        request.getfixturevalue("cpp_extension")
    q, k, v = qkv(1, 2, 20, 8, torch.float32)

    def attn(q, k, v):
        return hetero_attention(q * 2, k, v, skip_queries=4, backend=which).transpose(1, 2).flatten(2)

    compiled = torch.compile(attn, fullgraph=True, backend="eager" if which == "triton" else "aot_eager")
    expected = F.scaled_dot_product_attention(2 * q[:, :, 4:], k, v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(compiled(q, k, v), expected, atol=2e-5, rtol=1e-4)


def test_rejects_bad_arguments():
    q, k, v = qkv(1, 2, 8, 4, torch.float32)
    with pytest.raises(ValueError, match="skip_queries must be in"):
        hetero_attention(q, k, v, skip_queries=9, backend="ref")
    with pytest.raises(ValueError, match="k/v"):
        hetero_attention(q, k[:, :1], v, backend="ref")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [LONG[2], SHORT[0]])
def test_cuda_auto_dispatch_under_inductor(shape):
    B, H, S, d, skip = shape
    q, k, v = (t.cuda() for t in qkv(B, H, S, d, torch.bfloat16))
    fn = torch.compile(lambda q, k, v: hetero_attention(q, k, v, skip_queries=skip), fullgraph=True)
    ref = hetero_attention_ref(q.float(), k.float(), v.float(), skip_queries=skip)
    torch.testing.assert_close(fn(q, k, v).float(), ref, **TOL[torch.bfloat16])


def test_cpu_auto_dispatch_uses_sdpa(monkeypatch, request):
    """On CPU SDPA is the faster path (see the dispatcher), even with the C++ kernel loaded."""
    request.getfixturevalue("cpp_extension")
    monkeypatch.delenv("MIGA_FAST_BACKEND", raising=False)
    monkeypatch.setattr(torch.ops.miga_fast, "hetero_attention", lambda *a: pytest.fail("C++ kernel called"))
    for shape in [(2, 1, 16, 8), (1, 1, 100, 8)]:
        q, k, v = qkv(*shape, torch.float32)
        torch.testing.assert_close(hetero_attention(q, k, v), hetero_attention_ref(q, k, v))
