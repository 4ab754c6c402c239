"""VC2UNet against a literal re-derivation of LVDM's UNetModel (tests/models/vc2_reference.py), tiny configs."""

from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

from miga_fast.models.vc2_unet import PREFIX, VC2Config, VC2UNet, vc2_state_dict_from_checkpoint
from tests.models.vc2_reference import UNetModel

# (1) VideoCrafter2's layout, shrunk: linear projections, fps, init_attn, temporal convs, a level without attention.
# (2) the other switches of the original: 1x1-conv projections, num_heads, depth 2, 3x3x3 temporal convs,
#     pooling resamplers, two res blocks per level.
# (3) the spatial-only skeleton: no temporal convs/attention, no fps, no init_attn.
CONFIGS = {
    "vc2": VC2Config.tiny(),
    "variant": VC2Config.tiny(
        use_linear=False, num_heads=2, num_head_channels=-1, addition_attention=False, transformer_depth=2,
        temporal_transformer_depth=2, tempspatial_aware=True, conv_resample=False, num_res_blocks=2,
        channel_mult=(1, 2), attention_resolutions=(1,), context_dim=24,
    ),
    "spatial": VC2Config.tiny(temporal_conv=False, temporal_attention=False, fps_cond=False, addition_attention=False),
}  # fmt: skip
B, F, H, W, S = 2, 4, 8, 12, 5
# fp32 round-off of two different op orders (fused vs unfused K/V, fp32 norms) over ~20 layers, outputs up to ~5:
# 1.35e-5 worst seen here, 1.18e-5 + rtol on another box; 3e-5 is still ~6e-6 of the output range.
TOL = dict(atol=3e-5, rtol=1e-5)

# unet_config.params of configs/inference_t2v_512_v2.0.yaml (VideoCrafter, FIFO-Diffusion and MIGA ship the same)
VC2_YAML_PARAMS = dict(
    in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
    channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=1, context_dim=1024, use_linear=True,
    use_checkpoint=True, temporal_conv=True, temporal_attention=True, temporal_selfatt_only=True,
    use_relative_position=False, use_causal_attention=False, temporal_length=16, addition_attention=True,
    fps_cond=True,
)  # fmt: skip


def _random_model(cfg: VC2Config, seed: int = 0) -> VC2UNet:
    """A model whose norms' affine parameters and biases are non-trivial too."""
    torch.manual_seed(seed)
    model = VC2UNet(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    """(config, our model, the reference built from the same state dict)."""
    cfg = CONFIGS[request.param]
    ours = _random_model(cfg)
    ref = UNetModel(**asdict(cfg)).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)  # same parameter names as the original's
    return cfg, ours, ref


@pytest.fixture(scope="module")
def tiny():
    return _random_model(CONFIGS["vc2"])


def _inputs(cfg: VC2Config, batch: int = B, frames: int = F):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_channels, frames, H, W, generator=g)
    context = torch.randn(batch, S, cfg.context_dim, generator=g)
    return x, context


def _per_frame_t(batch: int = B, frames: int = F) -> torch.Tensor:
    return torch.linspace(999, 0, batch * frames).round().view(batch, frames)


@torch.no_grad()
def test_uniform_timesteps_match_reference(pair):
    cfg, ours, ref = pair
    x, context = _inputs(cfg)
    t = torch.tensor([999, 250])
    expected = ref(x, t, context, fps=8)
    for out in (ours(x, t[:, None].expand(B, F), context), ours(x, t, context), ours(x, t.float(), context, fps=8)):
        assert out.shape == (B, cfg.out_channels, F, H, W)
        torch.testing.assert_close(out, expected, **TOL)
    print(f"uniform t: max abs err {(out - expected).abs().max():.2e} (|out| max {expected.abs().max():.2f})")
    # per-sample fps tensor, as the official samplers pass it
    fps = torch.tensor([8, 28])
    torch.testing.assert_close(ours(x, t, context, fps=fps), ref(x, t, context, fps=fps), **TOL)


@torch.no_grad()
def test_per_frame_timesteps_match_fifo_reference(pair):
    cfg, ours, ref = pair
    # FIFO-Diffusion's call: B = 1, timesteps [F] (long), fps a [1] tensor
    x, context = _inputs(cfg, batch=1)
    t = torch.tensor([[999, 650, 300, 0]])
    expected = ref(x, t[0], context, fps=torch.tensor([8]))
    torch.testing.assert_close(ours(x, t, context), expected, **TOL)
    # any B: the reference's is_fifo branch with the frame-major [B*F] flattening and an int fps
    x, context = _inputs(cfg)
    t = _per_frame_t()
    torch.testing.assert_close(ours(x, t, context), ref(x, t.flatten(), context, fps=8), **TOL)


@torch.no_grad()
def test_per_frame_window_is_not_separable(tiny):
    """With per-frame t the temporal layers still see the whole window: frames are not independent."""
    x, context = _inputs(tiny.config)
    t = _per_frame_t()
    out = tiny(x, t, context)
    alone = torch.cat([tiny(x[:, :, f : f + 1], t[:, f : f + 1], context) for f in range(F)], dim=2)
    assert (out - alone).abs().max() > 1e-2
    # changing frame 2's timestep changes every frame's output (temporal GroupNorm / attention / convs)
    t2 = t.clone()
    t2[:, 2] += 100
    changed = (tiny(x, t2, context) - out).abs().amax(dim=(0, 1, 3, 4))
    assert (changed > 1e-4).all(), changed


@torch.no_grad()
def test_time_embedding_enters_per_frame(tiny):
    """At the first ResBlock, a frame's timestep changes only that frame's emb_layers bias."""
    seen = []
    hook = tiny.input_blocks[1][0].emb_layers.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    x, context = _inputs(tiny.config)
    t = _per_frame_t()
    t2 = t.clone()
    t2[1, 2] = 3.0
    try:
        tiny(x, t, context)
        tiny(x, t2, context)
    finally:
        hook.remove()
    before, after = (s.view(B, F, -1) for s in seen)  # rows are frame-major per sample: [B*F, C]
    diff = (after - before).abs().amax(dim=-1)
    assert diff[1, 2] > 1e-3
    diff[1, 2] = 0
    assert diff.max() == 0, diff


@torch.no_grad()
def test_checkpoint_round_trip(tiny, tmp_path):
    x, context = _inputs(tiny.config)
    t = _per_frame_t()
    expected = tiny(x, t, context)
    unet = {PREFIX + k: v for k, v in tiny.state_dict().items()}
    extra = {"first_stage_model.decoder.conv_in.weight": torch.randn(3, 3), "cond_stage_model.proj": torch.randn(2)}
    extra["alphas_cumprod"] = torch.rand(10)
    torch.save({"state_dict": {**unet, **extra}}, tmp_path / "model.ckpt")
    save_file({**unet, **extra}, tmp_path / "model.safetensors")
    torch.save({"state_dict": unet}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # no mmap
    for name in ("model.ckpt", "model.safetensors", "legacy.pt"):
        loaded = VC2UNet.from_checkpoint(tmp_path / name, tiny.config)
        assert not loaded.training
        assert torch.equal(loaded(x, t, context), expected), name
    # a dict already in memory, and DeepSpeed's {'module': {'_forward_module.' + key}} layout
    assert torch.equal(VC2UNet.from_checkpoint({"state_dict": unet}, tiny.config)(x, t, context), expected)
    deepspeed = {"module": {"_forward_module." + k: v for k, v in unet.items()}}
    assert vc2_state_dict_from_checkpoint(deepspeed).keys() == tiny.state_dict().keys()


def test_checkpoint_mismatch_names_the_keys(tiny, tmp_path):
    unet = {PREFIX + k: v for k, v in tiny.state_dict().items()}
    missing = dict(unet)
    del missing[PREFIX + "input_blocks.1.0.emb_layers.1.bias"]
    with pytest.raises(ValueError, match=r"1 missing: \['input_blocks\.1\.0\.emb_layers\.1\.bias'\]"):
        VC2UNet.from_checkpoint({"state_dict": missing}, tiny.config)

    renamed = dict(unet)
    renamed[PREFIX + "init_attn.0.proj_in.weights"] = renamed.pop(PREFIX + "init_attn.0.proj_in.weight")
    torch.save({"state_dict": renamed}, tmp_path / "renamed.ckpt")
    with pytest.raises(ValueError) as err:
        VC2UNet.from_checkpoint(tmp_path / "renamed.ckpt", tiny.config)
    assert "init_attn.0.proj_in.weight'" in str(err.value) and "init_attn.0.proj_in.weights" in str(err.value)
    assert "1 missing" in str(err.value) and "1 unexpected" in str(err.value)

    # wrong config: shapes and key sets differ, one error with counts
    with pytest.raises(ValueError, match=r"wrong-shape.*is the VC2Config right|is the VC2Config right.*wrong-shape"):
        VC2UNet.from_checkpoint({"state_dict": unet}, VC2Config.tiny(context_dim=24))

    with pytest.raises(ValueError, match=r"expected keys starting with 'model\.diffusion_model\.'"):
        VC2UNet.from_checkpoint({"state_dict": {"first_stage_model.x": torch.zeros(1)}}, tiny.config)
    with pytest.raises(ValueError, match="model.diffusion_model."):
        vc2_state_dict_from_checkpoint(tiny.state_dict())  # a bare UNet state dict is not a checkpoint
    with pytest.raises(FileNotFoundError):
        VC2UNet.from_checkpoint(tmp_path / "nope.ckpt", tiny.config)


@torch.no_grad()
def test_bf16_close_to_fp32(tiny):
    x, context = _inputs(tiny.config)
    t = _per_frame_t()
    expected = tiny(x, t, context)
    state = {"state_dict": {PREFIX + k: v for k, v in tiny.state_dict().items()}}
    half = VC2UNet.from_checkpoint(state, tiny.config, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    out = half(x, t, context)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = (out - expected).abs().max() / expected.abs().max()
    print(f"bf16 vs fp32: max abs err / max |out| = {rel:.2e}")
    assert rel < 5e-2
    assert half(x.bfloat16(), t, context).dtype == torch.bfloat16


def test_denoise_engine_signature(tiny):
    x, context = _inputs(tiny.config)
    x.requires_grad_(True)
    out = tiny.denoise(x, _per_frame_t(), context)
    assert out.shape == (B, 4, F, H, W) and out.is_contiguous() and not out.requires_grad
    assert torch.equal(out, tiny(x, _per_frame_t(), context, fps=8).detach())  # fps default: FIFO/MIGA's 8
    other = VC2UNet(tiny.config, fps=24).eval()
    other.load_state_dict(tiny.state_dict())
    assert not torch.equal(other.denoise(x, _per_frame_t(), context), out)


def test_full_vc2_layout_matches_reference():
    """VideoCrafter2 512 v2.0 on the meta device: same keys and shapes as the re-derived original."""
    assert VC2Config.from_dict(VC2_YAML_PARAMS) == VC2Config()
    with torch.device("meta"):
        ours = VC2UNet(VC2Config())
        ref = UNetModel(**VC2_YAML_PARAMS)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert len(shapes) == 1484
    assert sum(v.numel() for v in ours.parameters()) == 1_413_284_420
    # a few names that only the original's spelling and nesting produce
    assert shapes["init_attn.0.proj_in.weight"] == (512, 320, 1)  # Conv1d: init_attn ignores use_linear
    assert shapes["input_blocks.1.2.proj_in.weight"] == (320, 320)
    assert shapes["input_blocks.1.0.temopral_conv.conv4.3.weight"] == (320, 320, 3, 1, 1)
    assert shapes["output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)  # level without attention
    assert shapes["output_blocks.5.3.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["fps_embedding.2.weight"] == (1280, 1280)
    assert shapes["middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (1280, 1024)


def test_config_validation():
    with pytest.raises(ValueError, match="use_relative_position"):
        VC2Config(use_relative_position=True)
    with pytest.raises(ValueError, match="temporal_selfatt_only"):
        VC2Config(temporal_selfatt_only=False)
    with pytest.raises(ValueError, match="unknown UNetModel config keys"):
        VC2Config.from_dict({**VC2_YAML_PARAMS, "image_cross_attention": False})
    with pytest.raises(ValueError, match="multiples of norm_groups=32"):
        VC2Config.tiny(model_channels=48)
    assert VC2Config.tiny(model_channels=48, norm_groups=16).norm_groups == 16  # 48, 96: multiples of 16
    # keys the yaml omits take UNetModel's defaults (use_relative_position=True), not VideoCrafter2's
    with pytest.raises(ValueError, match="use_relative_position"):
        VC2Config.from_dict({k: v for k, v in VC2_YAML_PARAMS.items() if k != "use_relative_position"})


@torch.no_grad()
def test_input_validation(tiny):
    x, context = _inputs(tiny.config)
    t = _per_frame_t()
    with pytest.raises(ValueError, match=r"t must be \[B, F\]"):
        tiny(x, t[:, :2], context)
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny(x[..., :6], t, context)
    with pytest.raises(ValueError, match="context must be"):
        tiny(x, t, context[:1])
    with pytest.raises(ValueError, match="fps must be"):
        tiny(x, t, context, fps=torch.tensor([8]))


def test_norm_groups_reach_every_group_norm():
    model = VC2UNet(VC2Config.tiny(norm_groups=8))
    groups = {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {8}
    assert {m.num_groups for m in VC2UNet(VC2Config.tiny()).modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
