"""Codecs on tiny random VAEs: streaming decode == whole-clip decode, constant streaming memory, LDM key conversion."""

import pytest
import torch

from miga_fast.models.codecs import IdentityCodec, KLVAECodec, WanVAECodec, ldm_vae_config

diffusers = pytest.importorskip("diffusers")

WAN_TOL = 1e-5  # post_quant_conv (1x1x1) applied per latent vs over the clip: conv algorithm rounding only


@pytest.fixture(scope="module")
def wan_vae():
    torch.manual_seed(0)
    # Wan2.1's structure (3 spatial downsamples, 2 temporal ones) at a tiny width
    return diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                      temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                                      latents_std=[1.5, 0.5, 2.0, 1.0]).eval()


@pytest.fixture(scope="module")
def kl_vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                   block_out_channels=[32, 64], layers_per_block=1, latent_channels=4).eval()


def test_identity_codec():
    codec = IdentityCodec()
    x = torch.rand(1, 3, 5, 4, 6) * 2 - 1
    assert torch.equal(codec.decode(codec.encode(x)), x)
    frames = codec.stream_decoder().push(x[0, :, 2])
    assert len(frames) == 1 and torch.equal(frames[0], x[0, :, 2])
    assert codec.latents_for(7) == 7 and codec.latent_of(6) == 6
    with pytest.raises(ValueError, match=r"latents must be \[B, 3"):
        codec.decode(torch.zeros(1, 4, 1, 2, 2))


@torch.no_grad()
def test_kl_vae_streams_frame_by_frame_as_vc2(kl_vae):
    codec = KLVAECodec(kl_vae)
    assert (codec.latent_channels, codec.scale_factor, codec.frames_per_latent) == (4, 2, 1)
    z = torch.randn(1, 4, 3, 4, 5)
    # VideoCrafter2 decode_first_stage_2DAE: vae.decode(z / 0.18215) per frame
    expected = torch.stack([kl_vae.decode(z[:, :, i] / 0.18215).sample for i in range(3)], dim=2)
    assert torch.equal(codec.decode(z), expected)
    decoder = codec.stream_decoder()
    streamed = [f for i in range(3) for f in decoder.push(z[0, :, i])] + decoder.flush()
    assert len(streamed) == 3 and torch.equal(torch.stack(streamed, 1), expected[0])
    x = torch.rand(1, 3, 2, 8, 10) * 2 - 1
    enc = codec.encode(x)
    assert enc.shape == (1, 4, 2, 4, 5)
    assert torch.allclose(enc[:, :, 1], kl_vae.encode(x[:, :, 1]).latent_dist.mode() * 0.18215, atol=1e-6)


def _to_ldm(state: dict) -> dict:
    """diffusers AutoencoderKL keys -> the LDM first_stage_model layout (written from the LDM module names)."""
    n = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down_blocks."))
    out = {}
    for k, v in state.items():
        k = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = k.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        if "mid_block.attentions.0" in k:
            k = k.replace("mid_block.attentions.0", "mid.attn_1").replace("group_norm", "norm")
            for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                k = k.replace(a, b)
            if v.dim() == 2:  # LDM attention projections are 1x1 convs
                v = v[:, :, None, None]
        parts = k.split(".")
        if parts[1] == "down_blocks":
            k = k.replace("down_blocks", "down").replace("resnets", "block").replace("downsamplers.0", "downsample")
        elif parts[1] == "up_blocks":  # LDM numbers decoder levels from the lowest resolution up
            parts[1:3] = ["up", str(n - 1 - int(parts[2]))]
            k = ".".join(parts).replace("resnets", "block").replace("upsamplers.0", "upsample")
        out[k] = v
    return out


@torch.no_grad()
def test_kl_vae_from_ldm_layout(kl_vae):
    ldm = _to_ldm(kl_vae.state_dict())
    # spot-check the layout against names of the real VideoCrafter2 first_stage_model
    for key in ("encoder.down.0.block.0.norm1.weight", "encoder.down.0.downsample.conv.weight",
                "encoder.mid.attn_1.q.weight", "decoder.up.1.block.1.conv2.weight", "decoder.up.1.upsample.conv.weight",
                "decoder.up.0.block.0.nin_shortcut.weight", "decoder.norm_out.weight", "post_quant_conv.weight"):
        assert key in ldm, key
    assert ldm["decoder.mid.attn_1.proj_out.weight"].dim() == 4
    config = ldm_vae_config(ldm)
    assert config["block_out_channels"] == [32, 64] and config["layers_per_block"] == 1
    codec = KLVAECodec.from_ldm(ldm)
    z = torch.randn(1, 4, 2, 3, 3)
    assert torch.equal(codec.decode(z), KLVAECodec(kl_vae).decode(z))
    broken = dict(ldm)
    del broken["decoder.conv_in.weight"]
    with pytest.raises(ValueError, match=r"1 missing .*decoder.conv_in.weight"):
        KLVAECodec.from_ldm(broken)
    with pytest.raises(ValueError, match="no KL-VAE weights"):
        KLVAECodec.from_ldm({"foo": torch.zeros(1)})


@torch.no_grad()
def test_wan_stream_equals_whole_clip_decode(wan_vae):
    codec = WanVAECodec(wan_vae)
    assert (codec.latent_channels, codec.scale_factor, codec.frames_per_latent) == (4, 8, 4)
    n = 5
    z = torch.randn(1, 4, n, 2, 3)
    mean, std = torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([1.5, 0.5, 2.0, 1.0])
    # diffusers WanPipeline: latents / (1 / std) + mean, then vae.decode
    expected = wan_vae.decode(z / (1.0 / std.view(1, 4, 1, 1, 1)) + mean.view(1, 4, 1, 1, 1)).sample
    assert expected.shape == (1, 3, 1 + 4 * (n - 1), 16, 24)
    assert torch.equal(codec.decode(z), expected)
    decoder = codec.stream_decoder()
    counts, frames = [], []
    for i in range(n):
        out = decoder.push(z[0, :, i])
        counts.append(len(out))
        frames += out
    assert counts == [1, 4, 4, 4, 4] and decoder.flush() == []
    assert [codec.latents_for(f) for f in (1, 2, 5, 6, 17)] == [1, 2, 2, 3, 5]
    assert [codec.latent_of(f) for f in (0, 1, 4, 5, 16)] == [0, 1, 1, 2, 4]
    err = (torch.stack(frames, 1)[None] - expected).abs().max().item()
    print(f"Wan VAE streaming vs whole-clip decode: max abs err {err:.1e}")
    assert err < WAN_TOL


@torch.no_grad()
def test_wan_stream_memory_is_constant(wan_vae):
    decoder = WanVAECodec(wan_vae).stream_decoder()
    sizes = []
    for _ in range(12):
        decoder.push(torch.randn(4, 2, 3))
        sizes.append(decoder.cache_numel())
    assert len(set(sizes[1:])) == 1, sizes  # the first latent fills the cache with 1 time step, then it is fixed
    # every cached feature holds at most the last 2 time steps of its conv's input
    assert all(t.shape[2] <= 2 for t in decoder.cache if isinstance(t, torch.Tensor))


@torch.no_grad()
def test_wan_encode_normalises(wan_vae):
    codec = WanVAECodec(wan_vae)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = codec.encode(x)
    raw = wan_vae.encode(x).latent_dist.mode()
    mean, std = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1), torch.tensor([1.5, 0.5, 2.0, 1.0])
    assert z.shape == (1, 4, 2, 2, 2)
    assert torch.allclose(z, (raw - mean) / std.view(1, 4, 1, 1, 1), atol=1e-6)
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        codec.encode(x[:, :, :4])
    with pytest.raises(ValueError, match=r"latent must be \[4, h, w\]"):
        codec.stream_decoder().push(torch.zeros(3, 2, 2))
