"""miga_fast.load on tiny random Wan2.1 folders and VideoCrafter2 checkpoints saved in their public layouts."""

import json
import shutil

import numpy as np
import pytest
import torch

import miga_fast
from miga_fast import ConfigError
from miga_fast.models.codecs import KLVAECodec, WanVAECodec
from miga_fast.models.load import WAN_NEGATIVE_PROMPT, load_bundle
from miga_fast.models.text import OpenCLIPTextEncoder, OpenCLIPTextModel, UMT5TextEncoder, load_clip_tokenizer
from tests.models.test_codecs import _to_ldm
from tests.models.test_text import openclip_checkpoint, write_clip_tokenizer, write_umt5

diffusers = pytest.importorskip("diffusers")

PROMPT = "a red circle moving left"
# Small schedules with each family's structure: Wan (flow UniPC, zigzag, reflection on), VC2 (DDIM, FIFO).
WAN_SMALL = dict(num_steps=12, window=6, zigzag=3, guidance_frames=0, stride=3, end_level=3, refine_level=2,
                 reflect_blocks=1, judged_level=8)
VC2_SMALL = dict(num_steps=8, window=4)


def build_wan_folder(root):
    """A diffusers WanPipeline (tiny transformer, VAE, umT5, tokenizer, scheduler) saved with save_pretrained."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    write_umt5(root / "parts")
    torch.manual_seed(0)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                                     latents_std=[1.5, 0.5, 2.0, 1.0])
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=5.0)
    pipe = diffusers.WanPipeline(tokenizer=AutoTokenizer.from_pretrained(root / "parts" / "tokenizer"),
                                 text_encoder=UMT5EncoderModel.from_pretrained(root / "parts" / "text_encoder"),
                                 transformer=transformer, vae=vae, scheduler=scheduler)
    pipe.save_pretrained(root / "wan")
    return root / "wan", pipe


def build_vc2_checkpoint(root):
    """A VideoCrafter2-layout model.ckpt (tiny UNet, tiny LDM KL-VAE, tiny OpenCLIP text tower, schedule
    buffers) and a tokenizer/ folder next to it. Returns (path, unet, vae, text state)."""
    from miga_fast.models.vc2_unet import VC2Config, VC2UNet

    folder = root / "VideoCrafter2"
    vocab = write_clip_tokenizer(folder / "tokenizer")
    torch.manual_seed(0)
    unet = VC2UNet(VC2Config.tiny()).eval()
    vae = diffusers.AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64],
                                  layers_per_block=1, latent_channels=4).eval()
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in _to_ldm(vae.state_dict()).items()})
    text = openclip_checkpoint(vocab)
    state.update(text)
    state.update(betas=torch.linspace(0, 1, 1000), alphas_cumprod=torch.rand(1000), scale_arr=torch.rand(1000))
    torch.save({"state_dict": state}, folder / "model.ckpt")
    return folder / "model.ckpt", unet, vae, text


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return build_wan_folder(tmp_path_factory.mktemp("wan"))


@pytest.fixture(scope="module")
def vc2(tmp_path_factory):
    return build_vc2_checkpoint(tmp_path_factory.mktemp("vc2"))


@torch.no_grad()
def test_load_wan_folder(wan):
    folder, pipe = wan
    gen = miga_fast.load(folder)
    bundle = gen.bundle
    assert bundle.family == "wan" and gen.family == "wan" and isinstance(bundle.codec, WanVAECodec)
    assert isinstance(bundle.text, UMT5TextEncoder) and bundle.text.max_length == 512
    assert bundle.negative_prompt == WAN_NEGATIVE_PROMPT and bundle.guidance_scale == 5.0 and bundle.shift == 5.0
    assert bundle.size_multiple == 16 and bundle.latent_shape((32, 48)) == (4, 4, 6)
    # the loaded components compute what the saved diffusers ones do
    x, t, ctx = torch.randn(1, 4, 2, 4, 4), torch.tensor([[700.0, 700.0]]), torch.randn(1, 5, 16)
    assert torch.allclose(bundle.denoise(x, t, ctx), pipe.transformer(x, t[:, 0], ctx).sample, atol=1e-5)
    z = torch.randn(1, 4, 2, 2, 2)
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
    std = torch.tensor([1.5, 0.5, 2.0, 1.0]).view(1, 4, 1, 1, 1)
    assert torch.equal(bundle.codec.decode(z), pipe.vae.decode(z / (1.0 / std) + mean).sample)
    assert gen.encode(PROMPT).shape == (1, 512, 16)


def test_wan_renders_end_to_end(wan, tmp_path):
    gen = miga_fast.load(wan[0])
    frames = list(gen.stream(PROMPT, frames=6, size=(16, 32), overrides=WAN_SMALL, seed=3))
    assert len(frames) == 6 and frames[0].shape == (16, 32, 3) and frames[0].dtype == np.uint8
    again = list(gen.stream(PROMPT, frames=6, size=(16, 32), overrides=WAN_SMALL, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))
    assert gen.bundle.text.encoded == 2  # the prompt and the negative prompt, encoded once for both runs
    with pytest.raises(ConfigError, match="mode must be one of .*'miga', 'miga-stream'.* for the wan model family"):
        list(gen.stream(PROMPT, frames=2, mode="fifo"))
    with pytest.raises(ConfigError, match="size must be .*multiples of 16"):
        list(gen.stream(PROMPT, frames=2, size=(16, 24), overrides=WAN_SMALL))


def _copy_without(src, dst, name):
    shutil.copytree(src, dst, ignore=lambda d, names: [name] if d == str(src) else [])
    return dst


def test_wan_folder_errors(wan, tmp_path):
    folder = wan[0]
    with pytest.raises(FileNotFoundError, match=r"lacks component folder\(s\) \['vae/'\]"):
        load_bundle(_copy_without(folder, tmp_path / "novae", "vae"))
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_bundle(_copy_without(folder, tmp_path / "noindex", "model_index.json"))
    other = _copy_without(folder, tmp_path / "other", "model_index.json")
    (other / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    with pytest.raises(ConfigError, match="only 'WanPipeline'"):
        load_bundle(other)
    broken = _copy_without(folder, tmp_path / "broken", "transformer")
    (broken / "transformer").mkdir()
    shutil.copy(folder / "transformer" / "config.json", broken / "transformer")
    with pytest.raises(FileNotFoundError, match="no weights in .*transformer"):
        load_bundle(broken)
    with pytest.raises(ConfigError, match="apply to VideoCrafter2 checkpoints only"):
        load_bundle(folder, tokenizer=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        miga_fast.load(tmp_path / "missing")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match="expected a bundled-model .safetensors file"):
        load_bundle(tmp_path / "model.onnx")


@torch.no_grad()
def test_load_vc2_checkpoint(vc2):
    from miga_fast.models.vc2_unet import VC2Config

    path, unet, vae, text_state = vc2
    gen = miga_fast.load(path, unet_config=VC2Config.tiny())
    bundle = gen.bundle
    assert bundle.family == "vc2" and isinstance(bundle.codec, KLVAECodec) and bundle.guidance_scale == 12.0
    assert isinstance(bundle.text, OpenCLIPTextEncoder) and bundle.size == (320, 512)
    x, t, ctx = torch.randn(1, 4, 3, 8, 8), torch.tensor([[999.0, 500.0, 1.0]]), torch.randn(1, 12, 32)
    assert torch.equal(bundle.denoise(x, t, ctx), unet.denoise(x, t, ctx))
    z = torch.randn(1, 4, 2, 4, 4)
    assert torch.equal(bundle.codec.decode(z), KLVAECodec(vae).decode(z))
    prefix = "cond_stage_model.model."
    model = OpenCLIPTextModel.from_state_dict({k[len(prefix):]: v for k, v in text_state.items()})
    expected = OpenCLIPTextEncoder(model, load_clip_tokenizer(path.parent / "tokenizer")).encode(PROMPT)
    assert torch.equal(gen.encode(PROMPT), expected)


def test_vc2_renders_end_to_end(vc2):
    from miga_fast.models.vc2_unet import VC2Config

    gen = miga_fast.load(vc2[0], unet_config=VC2Config.tiny())
    for mode, overrides in (("fifo", VC2_SMALL), ("miga-stream", dict(VC2_SMALL, zigzag=2, guidance_frames=1,
                                                                      stride=2, end_level=1, refine_level=1))):
        frames = list(gen.stream(PROMPT, frames=5, mode=mode, size=(8, 16), overrides=overrides))
        assert len(frames) == 5 and frames[0].shape == (8, 16, 3)


def test_vc2_checkpoint_errors(vc2, tmp_path):
    from miga_fast.models.vc2_unet import VC2Config

    path = vc2[0]
    lone = tmp_path / "lone" / "model.ckpt"
    lone.parent.mkdir()
    shutil.copy(path, lone)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer given and no .*tokenizer folder.*vocab.json"):
        load_bundle(lone, unet_config=VC2Config.tiny())
    with pytest.raises(FileNotFoundError, match="tokenizer='.*nope' does not exist"):
        load_bundle(lone, tokenizer=tmp_path / "nope", unet_config=VC2Config.tiny())
    assert load_bundle(lone, tokenizer=path.parent / "tokenizer", unet_config=VC2Config.tiny()).family == "vc2"
    with pytest.raises(ValueError, match="do not match VC2UNet"):  # the default (full-size) config
        load_bundle(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    no_vae = tmp_path / "no_vae.ckpt"
    torch.save({k: v for k, v in state.items() if not k.startswith("first_stage_model.")}, no_vae)
    with pytest.raises(ValueError, match=r"not a VideoCrafter2 checkpoint: no \['first_stage_model.\*'\]"):
        load_bundle(no_vae, tokenizer=path.parent / "tokenizer")
    bad_text = tmp_path / "bad_text.ckpt"
    torch.save({k: v for k, v in state.items() if "resblocks.0.ln_2" not in k}, bad_text)
    with pytest.raises(ValueError, match=r"OpenCLIP text tower weights do not match: 2 missing"):
        load_bundle(bad_text, tokenizer=path.parent / "tokenizer", unet_config=VC2Config.tiny())


def test_damaged_files(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable .safetensors file"):
        miga_fast.load(tmp_path / "bad.safetensors")
    (tmp_path / "bad.ckpt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.ckpt cannot be read by a weights-only torch.load"):
        miga_fast.load(tmp_path / "bad.ckpt")
