"""WanDiT against diffusers' WanTransformer3DModel on tiny random configs (fp32 parity, per-frame path)."""

import json
import shutil

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from miga_fast.models import wan
from miga_fast.models.wan import WanConfig, WanDiT
from miga_fast.ops.attention import attention, attention_ref, resolve_backend

diffusers = pytest.importorskip("diffusers")

# (1) Wan2.1 layout: square patch, affine cross-attention norm, rope split 16 -> (8, 4, 4).
# (2) non-square patch, no cross-attention norm, C_out != C_in, rope split 24 -> (8, 8, 8).
CONFIGS = {
    "wan21": dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=24, freq_dim=32, ffn_dim=48, num_layers=2, cross_attn_norm=True, rope_max_seq_len=64,
    ),
    "variant": dict(
        patch_size=(1, 2, 1), num_attention_heads=3, attention_head_dim=24, in_channels=16, out_channels=8,
        text_dim=20, freq_dim=16, ffn_dim=40, num_layers=2, cross_attn_norm=False, rope_max_seq_len=64,
    ),
}  # fmt: skip
B, F, H, W, L = 2, 3, 8, 12, 7
# per-frame timesteps [B, F]: mixed levels, a fractional one and both ends of the range
MIXED_T = torch.tensor([[999.0, 640.25, 3.0], [500.0, 500.0, 17.5]])
FP32_TOL = 1e-5


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    """(config dict, diffusers model, unsharded folder, sharded folder) for one tiny config."""
    cfg = CONFIGS[request.param]
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(**cfg).eval()
    root = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(root / "single")
    ref.save_pretrained(root / "sharded", max_shard_size="40KB")
    return cfg, ref, root / "single", root / "sharded"


def _inputs(cfg):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, cfg["in_channels"], F, H, W, generator=g)
    context = torch.randn(B, L, cfg["text_dim"], generator=g)
    return x, context


def _tokens_per_frame(cfg):
    _, ph, pw = cfg["patch_size"]
    return (H // ph) * (W // pw)


@torch.no_grad()
def test_uniform_timesteps_match_diffusers(saved):
    cfg, ref, single, sharded = saved
    assert len(list(sharded.glob("*.safetensors"))) > 1, "max_shard_size did not shard the tiny model"
    x, context = _inputs(cfg)
    timestep = torch.tensor([999.0, 250.5])
    expected = ref(x, timestep, context).sample
    for folder in (single, sharded):
        ours = WanDiT.from_pretrained(folder)
        out = ours(x, timestep[:, None].expand(B, F), context)
        assert out.shape == (B, cfg["out_channels"], F, H, W)
        err = (out - expected).abs().max().item()
        print(f"uniform t, {folder.name}: max abs err {err:.2e} (|out| max {expected.abs().max():.2f})")
        assert err < FP32_TOL


@torch.no_grad()
def test_per_frame_timesteps_match_diffusers_per_token(saved):
    cfg, ref, single, _ = saved
    x, context = _inputs(cfg)
    t = MIXED_T
    # diffusers' Wan2.2-TI2V path takes one timestep per token: repeat each frame's over its tokens
    expected = ref(x, t.repeat_interleave(_tokens_per_frame(cfg), dim=1), context).sample
    out = WanDiT.from_pretrained(single)(x, t, context)
    err = (out - expected).abs().max().item()
    print(f"per-frame t: max abs err {err:.2e}")
    assert err < FP32_TOL
    # the frames really are modulated differently
    uniform = WanDiT.from_pretrained(single)(x, t[:, :1].expand(B, F), context)
    assert (out[:, :, 1:] - uniform[:, :, 1:]).abs().max() > 1e-2


@torch.no_grad()
def test_bf16(saved):
    cfg, _, single, _ = saved
    x, context = _inputs(cfg)
    t = MIXED_T
    fp32 = WanDiT.from_pretrained(single)(x, t, context)
    ours = WanDiT.from_pretrained(single, dtype=torch.bfloat16)
    kept = {n for n, p in ours.named_parameters() if p.dtype == torch.float32}
    assert kept and all("time_embedder" in n or "scale_shift_table" in n or "norm2" in n for n in kept)
    out = ours(x.bfloat16(), t, context.bfloat16())
    assert out.dtype == torch.bfloat16
    err = (out.float() - fp32).abs().max().item()
    scale = fp32.abs().max().item()
    print(f"bf16 vs fp32: max abs err {err:.2e} (|out| max {scale:.2f})")
    assert err < 0.03 * scale

    # diffusers in bf16 keeps the same modules in fp32, so the two bf16 paths agree closely
    ref = diffusers.WanTransformer3DModel.from_pretrained(single, torch_dtype=torch.bfloat16).eval()
    expected = ref(x.bfloat16(), t.repeat_interleave(_tokens_per_frame(cfg), 1), context.bfloat16()).sample
    err = (out.float() - expected.float()).abs().max().item()
    print(f"bf16 ours vs diffusers bf16: max abs err {err:.2e}")
    assert err < 0.01 * scale


class _TimestepFlow(TorchDispatchMode):
    """Records the shape of every tensor computed from the timesteps but not from the latents."""

    def __init__(self, t, x):
        super().__init__()
        # ids + strong references (so ids are not recycled); tensors cannot go in a (Weak)Set
        self._keep = [t, x]
        self.from_t, self.from_x = {id(t)}, {id(x)}
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        self._keep += outs
        if any(id(a) in self.from_x for a in ins):
            self.from_x.update(map(id, outs))
        elif any(id(a) in self.from_t for a in ins):
            self.from_t.update(map(id, outs))
            self.shapes += [tuple(o.shape) for o in outs]
        return out


def _largest_timestep_tensor(fn, t, x):
    with torch.no_grad(), _TimestepFlow(t, x) as flow:
        fn(t, x)
    return max(flow.shapes, key=lambda s: torch.Size(s).numel())


def test_modulation_is_per_frame_not_per_token(saved):
    cfg, ref, single, _ = saved
    x, context = _inputs(cfg)
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    tokens = F * _tokens_per_frame(cfg)
    t = MIXED_T
    ours = WanDiT.from_pretrained(single)

    shape = _largest_timestep_tensor(lambda t, x: ours(x, t, context), t, x)
    print(f"largest timestep-derived tensor, ours: {shape}")
    # B*F*6*dim, and below any per-token [B, tokens, dim] tensor (tokens per frame > 6 here)
    assert torch.Size(shape).numel() <= B * F * 6 * dim < B * tokens * dim

    # the probe does see a per-token modulation: diffusers' per-token path builds [B, tokens, 6, dim]
    t_tok = t.repeat_interleave(_tokens_per_frame(cfg), dim=1)
    shape = _largest_timestep_tensor(lambda t, x: ref(x, t, context), t_tok, x)
    assert torch.Size(shape).numel() == B * tokens * 6 * dim


@torch.no_grad()
def test_frame_positions_act_only_through_rope(saved, monkeypatch):
    cfg, _, single, _ = saved
    x, context = _inputs(cfg)
    t = MIXED_T
    ours = WanDiT.from_pretrained(single)
    default = ours(x, t, context)
    assert torch.equal(ours(x, t, context, frame_positions=torch.arange(F)), default)
    # RoPE is relative: shifting every frame by the same offset leaves attention unchanged
    shifted = ours(x, t, context, frame_positions=torch.arange(F) + 37)
    assert (shifted - default).abs().max() < FP32_TOL
    spread = ours(x, t, context, frame_positions=torch.tensor([0, 2, 9]))
    assert (spread - default).abs().max() > 1e-3
    # with the RoPE tables pinned to the default positions, other positions change nothing
    rope = wan.rope_cos_sin
    monkeypatch.setattr(wan, "rope_cos_sin", lambda p, *a: rope(torch.arange(len(p)), *a))
    assert torch.equal(ours(x, t, context, frame_positions=torch.tensor([0, 2, 9])), default)


@torch.no_grad()
def test_rope_theta_sets_the_rope_base(saved, monkeypatch):
    cfg, _, single, _ = saved
    x, context = _inputs(cfg)
    t = MIXED_T
    ours = WanDiT.from_pretrained(single)
    assert ours.config.rope_theta == 10000.0  # Wan's base when config.json does not name one
    small = WanDiT(WanConfig.from_dict({**cfg, "rope_theta": 20.0}))
    small.load_state_dict(ours.state_dict())
    out = small.eval()(x, t, context)
    assert (out - ours(x, t, context)).abs().max() > 1e-3
    # the base reaches the model through the RoPE tables and nowhere else
    rope = wan.rope_cos_sin
    monkeypatch.setattr(wan, "rope_cos_sin", lambda p, h, w, d, theta: rope(p, h, w, d, 20.0))
    assert torch.equal(ours(x, t, context), out)


def test_rope_tables_match_diffusers(saved):
    cfg = saved[0]
    head_dim, patch = cfg["attention_head_dim"], cfg["patch_size"]
    rope = diffusers.models.transformers.transformer_wan.WanRotaryPosEmbed(head_dim, patch, 64)
    hp, wp = H // patch[1], W // patch[2]
    ref_cos, ref_sin = rope(torch.zeros(1, 1, F, H, W))  # [1, tokens, 1, head_dim], pairs repeated
    cos, sin = wan.rope_cos_sin(torch.arange(F), hp, wp, head_dim)
    assert torch.equal(cos, ref_cos[0, :, 0, 0::2]) and torch.equal(sin, ref_sin[0, :, 0, 1::2])

    # explicit positions pick rows of diffusers' frame table
    positions = torch.tensor([5, 0, 40])
    t_dim = wan.rope_split(head_dim)[0]
    cos = wan.rope_cos_sin(positions, hp, wp, head_dim)[0].view(F, hp * wp, -1)
    expected = rope.freqs_cos[positions, 0:t_dim:2].float()
    assert torch.equal(cos[..., : t_dim // 2], expected[:, None].expand(-1, hp * wp, -1))


@torch.no_grad()
def test_denoise_is_forward(saved):
    cfg, _, single, _ = saved
    x, context = _inputs(cfg)
    t = torch.full((B, F), 500.0)
    ours = WanDiT.from_pretrained(single)
    assert torch.equal(ours.denoise(x, t, context), ours(x, t, context))
    with pytest.raises(ValueError, match=r"t must be \[B, F\]"):
        ours(x, t[:, 0], context)
    with pytest.raises(ValueError, match=r"H % 2 == 0"):
        ours(x[..., :-1, :], t, context)


def test_loader_errors(saved, tmp_path):
    _, _, single, sharded = saved
    with pytest.raises(FileNotFoundError, match="nowhere"):
        WanDiT.from_pretrained(tmp_path / "nowhere")

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        WanDiT.from_pretrained(tmp_path / "empty")

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(single / "config.json", no_weights)
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors"):
        WanDiT.from_pretrained(no_weights)

    lost_shard = shutil.copytree(sharded, tmp_path / "lost_shard")
    victim = sorted(lost_shard.glob("*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        WanDiT.from_pretrained(lost_shard)

    from safetensors.torch import load_file, save_file

    renamed = shutil.copytree(single, tmp_path / "renamed")
    weights = renamed / wan.WEIGHTS_NAME
    state = load_file(weights)
    state["blocks.0.attn1.to_qq.weight"] = state.pop("blocks.0.attn1.to_q.weight")
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"1 missing .*to_q\.weight.*1 unexpected .*to_qq\.weight"):
        WanDiT.from_pretrained(renamed)

    reshaped = shutil.copytree(single, tmp_path / "reshaped")
    config = json.loads((reshaped / "config.json").read_text())
    config["ffn_dim"] += 8
    (reshaped / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"wrong-shape .*ffn\.net\.0\.proj"):
        WanDiT.from_pretrained(reshaped)


def test_unsupported_config():
    base = CONFIGS["wan21"]
    with pytest.raises(ValueError, match="image_dim.*not supported"):
        WanConfig.from_dict({**base, "image_dim": 1280})
    with pytest.raises(ValueError, match="unknown .*'window_size'"):
        WanConfig.from_dict({**base, "window_size": [-1, -1]})
    with pytest.raises(ValueError, match="patch_size"):
        WanConfig.from_dict({**base, "patch_size": [2, 2, 2]})
    bookkeeping = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.42.1"}
    assert WanConfig.from_dict({**base, **bookkeeping, "out_channels": None}).out_channels == 16


def test_parameter_counts_match_diffusers(saved):
    cfg, ref, _, _ = saved
    ours = WanDiT(WanConfig.from_dict(cfg))
    n = sum(p.numel() for p in ours.parameters())
    print(f"parameters: {n}")
    assert n == sum(p.numel() for p in ref.parameters())


def test_attention_dispatch(monkeypatch):
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    assert resolve_backend(q) == "sdpa"
    assert torch.equal(attention(q, k, v), attention_ref(q, k, v))
    manual = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    assert (attention(q, k, v) - manual).abs().max() < 1e-6
    monkeypatch.setenv("MIGA_FAST_ATTN", "flash")
    with pytest.raises(RuntimeError, match="'flash'.*MIGA_FAST_ATTN.*CUDA"):
        attention(q, k, v)
    monkeypatch.setenv("MIGA_FAST_ATTN", "cudnn")
    with pytest.raises(ValueError, match="MIGA_FAST_ATTN must be one of"):
        attention(q, k, v)
    with pytest.raises(RuntimeError, match="'xformers'.*backend="):
        attention(q, k, v, backend="xformers")


def test_attention_auto_choice_under_compile_keeps_traceable_backends(monkeypatch):
    from miga_fast.ops import attention as attn

    q = torch.randn(1, 2, 4, 8)
    monkeypatch.setattr(attn, "unavailable_reason", lambda backend, q: None)  # as on a GPU with both installed
    compiling = {"on": False}
    monkeypatch.setattr(attn.torch.compiler, "is_compiling", lambda: compiling["on"])
    for version, under_compile in (((2, 5), "sdpa"), ((2, 6), "flash")):
        monkeypatch.setattr(attn, "_version", lambda package, v=version: v)
        compiling["on"] = False
        assert resolve_backend(q) == "flash"
        compiling["on"] = True
        assert resolve_backend(q) == under_compile
    assert "not traceable" in attn.compile_unsafe_reason("xformers") and attn.compile_unsafe_reason("sdpa") is None


def test_modulation_memory_formulas():
    # Wan2.1-1.3B at 480p: 81 frames -> 21 latent frames of 60 x 104, dim 1536, CFG batch 2
    args = dict(batch=2, frames=21, height=60, width=104, patch=(1, 2, 2), dim=1536)
    assert wan.per_token_modulation_bytes(**args, dtype_bytes=4) == 2 * 21 * 30 * 52 * 6 * 1536 * 4
    assert wan.per_frame_modulation_bytes(**args, dtype_bytes=4) == 2 * 21 * 6 * 1536 * 4


def test_tanh_gelu_is_atens_tanh_gelu():
    import torch.nn.functional as F

    from miga_fast.models.wan import TanhGELU

    x = torch.randn(3, 7, 257) * 4
    with torch.no_grad():
        fast = TanhGELU()(x)  # the CPU fp32 sigmoid form
    torch.testing.assert_close(fast, F.gelu(x, approximate="tanh"), atol=2e-6, rtol=1e-6)
    assert torch.equal(TanhGELU()(x.bfloat16()), F.gelu(x.bfloat16(), approximate="tanh"))  # ATen's own path
    assert torch.equal(TanhGELU()(x), F.gelu(x, approximate="tanh"))  # grad enabled (training): ATen's
