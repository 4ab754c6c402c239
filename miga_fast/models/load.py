"""Model bundles: denoiser + codec + text encoder + defaults, loaded from local files.

    load_bundle("tiny.safetensors")                       # the bundled model's format (pixel space)
    load_bundle("VideoCrafter2/model.ckpt")               # LVDM checkpoint + tokenizer/ folder next to it
    load_bundle("Wan2.1-T2V-1.3B-Diffusers")              # diffusers folder (model_index.json, ...)

Every failure names the path and what is missing or wrong in one error (FileNotFoundError / ValueError /
ConfigError). The VAEs run in float32 whatever `dtype` is (as diffusers' Wan examples do); the denoiser and
the text encoder take `dtype`.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, require
from .codecs import Codec, IdentityCodec, KLVAECodec, WanVAECodec
from .text import CachedTextEncoder

# Wan2.1's default negative prompt (shared_config.sample_neg_prompt), used by Wan and MIGA-Wan when none is given.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
WAN_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")  # scheduler/ is ignored: our solvers run
VC2_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text": "cond_stage_model.model."}


@dataclass
class ModelBundle:
    """What the pipeline needs from a model, with the defaults of its official sampler.

    denoise(x [B, C, F, h, w], t [B, F], cond [B, S, D]) -> prediction (eps or flow);
    text.encode(prompt) -> [1, S, D] (cached per prompt); codec: latents <-> frames.
    `size` (H, W) is the default frame size; H and W must be multiples of `size_multiple`.
    """

    denoise: Callable[[Tensor, Tensor, Tensor], Tensor]
    codec: Codec
    text: CachedTextEncoder
    family: str  # preset family: "tiny" | "vc2" | "wan" (presets f"{family}-{mode}")
    size: tuple[int, int]
    size_multiple: int
    shift: float = 5.0  # flow-matching sigma shift (flow solvers only)
    guidance_scale: float = 4.0
    negative_prompt: str = ""  # the CFG unconditional prompt
    fps: int = 12  # frame rate of written videos
    render_scale: int = 1  # integer upscaling of written frames
    module: nn.Module | None = None  # the denoiser module

    def latent_shape(self, size: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(C, h, w) of one latent for frames of `size` (H, W) (default `self.size`)."""
        h, w = size or self.size
        m = self.size_multiple
        require(h > 0 and w > 0 and h % m == 0 and w % m == 0, "size", f"(H, W) with H and W positive multiples "
                f"of {m} for this model", (h, w))
        s = self.codec.scale_factor
        return self.codec.latent_channels, h // s, w // s


class _TinyText(CachedTextEncoder):
    """The bundled model's TinyTextEncoder behind the cached `encode(prompt)` interface."""

    def __init__(self, text: nn.Module):
        super().__init__()
        self.text = text

    def _encode(self, prompt: str) -> Tensor:
        return self.text.encode([prompt])


def tiny_bundle(model) -> ModelBundle:
    """A loaded TinyVideoModel as a bundle (pixel space: IdentityCodec; family by its architecture)."""
    spec = model.spec
    return ModelBundle(denoise=model.denoise, codec=IdentityCodec(), text=_TinyText(model.text), family=spec.family,
                       size=(spec.frame_size, spec.frame_size), size_multiple=spec.size_multiple,
                       shift=spec.shift, guidance_scale=4.0, fps=12, render_scale=4, module=model)


def load_bundle(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
                tokenizer: str | Path | None = None, unet_config=None) -> ModelBundle:
    """Load the model at `path` (kind detected from the path, see the module doc).

    tokenizer: VideoCrafter2 only, a folder with the CLIP BPE vocab.json + merges.txt (default: `tokenizer/`
    next to the checkpoint). unet_config: VideoCrafter2 only, a `VC2Config` (default: VideoCrafter2 512 v2.0).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no model_index.json: expected a diffusers Wan2.1 "
                                    f"folder ({', '.join(n + '/' for n in WAN_COMPONENTS)} and model_index.json)")
        _only_for("a diffusers Wan folder", tokenizer=tokenizer, unet_config=unet_config)
        return load_wan(path, device, dtype)
    if path.suffix == ".safetensors" and _is_tiny(path):
        _only_for("a bundled-model file", tokenizer=tokenizer, unet_config=unet_config)
        return load_tiny(path, device, dtype)
    if path.suffix in (".ckpt", ".pt", ".pth", ".safetensors"):
        return load_vc2(path, device, dtype, tokenizer=tokenizer, unet_config=unet_config)
    raise ConfigError(f"model path {str(path)!r}: expected a bundled-model .safetensors file, a VideoCrafter2 "
                      "checkpoint (.ckpt/.pt/.pth/.safetensors) or a diffusers Wan2.1 folder")


def _only_for(kind: str, **options) -> None:
    given = [k for k, v in options.items() if v is not None]
    if given:
        raise ConfigError(f"option(s) {given} apply to VideoCrafter2 checkpoints only, not to {kind}")


def _is_tiny(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "spec" in (f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"{path} is not a readable .safetensors file ({err})") from None


def load_tiny(path: Path, device="cpu", dtype: torch.dtype = torch.float32) -> ModelBundle:
    """A miga_fast bundled-model .safetensors file (TinyVideoModel)."""
    from .tiny.bundle import TinyVideoModel

    return tiny_bundle(TinyVideoModel.load(path).to(device=device, dtype=dtype).eval())


# ----------------------------------------------------------------------------------------------- Wan2.1
def load_wan(folder: Path, device="cpu", dtype: torch.dtype = torch.float32) -> ModelBundle:
    """A diffusers Wan2.1 text-to-video folder: WanDiT + AutoencoderKLWan (fp32) + umT5 encoder."""
    from .text import UMT5TextEncoder
    from .wan import WanDiT

    index = _read_json(folder / "model_index.json")
    name = index.get("_class_name")
    if name != "WanPipeline":
        raise ConfigError(f"{folder}: model_index.json _class_name is {name!r}; only 'WanPipeline' "
                          "(Wan2.1 text-to-video) folders are supported")
    if index.get("transformer_2") not in (None, [None, None]):
        raise ConfigError(f"{folder}: a two-expert Wan2.2 folder (transformer_2) is not supported; use Wan2.1 T2V")
    missing = [n + "/" for n in WAN_COMPONENTS if not (folder / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"Wan folder {folder} lacks component folder(s) {missing} "
                                f"(needs {', '.join(n + '/' for n in WAN_COMPONENTS)})")
    dit = WanDiT.from_pretrained(folder / "transformer", device, dtype)
    vae = _diffusers_load("AutoencoderKLWan", folder / "vae").to(device)
    try:
        text = UMT5TextEncoder.from_pretrained(folder / "text_encoder", folder / "tokenizer", device, dtype)
    except OSError as err:  # transformers' "no file named ..." errors
        raise FileNotFoundError(f"Wan folder {folder}: cannot load text_encoder/ + tokenizer/ ({err})") from None
    return wan_bundle_from_modules(dit, vae, text.model, text.tokenizer, where=folder)


def wan_dit_from_diffusers(transformer: nn.Module) -> nn.Module:
    """Our WanDiT over a diffusers ``WanTransformer3DModel``'s own Parameter objects (no copy: same storage, and
    moving or casting the diffusers module in place moves this one too). Names and shapes are diffusers', so any
    mismatch (a Wan2.2 / I2V variant) raises one ValueError naming it."""
    from .wan import WanConfig, WanDiT

    config = WanConfig.from_dict(dict(transformer.config))
    with torch.device("meta"):  # no allocation: every parameter is replaced by the diffusers one below
        dit = WanDiT(config)
    ours = dict(dit.named_parameters())
    theirs = dict(transformer.named_parameters())
    missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    shapes = [k for k in ours.keys() & theirs.keys() if ours[k].shape != theirs[k].shape]
    if missing or unexpected or shapes or any(True for _ in dit.buffers()):
        raise ValueError(f"WanTransformer3DModel parameters do not match WanDiT: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, wrong shape {sorted(shapes)[:3]}")
    for name, param in theirs.items():
        owner, _, leaf = name.rpartition(".")
        dit.get_submodule(owner)._parameters[leaf] = param
    return dit.eval()


class DiffusersWanDenoiser:
    """diffusers' own ``WanTransformer3DModel.forward`` behind the engine contract: per-frame t [B, F] expanded
    to per-token t [B, F*H'*W'] (the Wan2.2 TI2V timestep path), so diffusers builds [B, tokens, 6, dim] adaLN
    tensors. Kept as the measured alternative to `wan_dit_from_diffusers` (bench/diffusers_denoiser.py)."""

    def __init__(self, transformer: nn.Module):
        self.transformer = transformer
        self.patch = tuple(transformer.config.patch_size)

    @torch.no_grad()
    def denoise(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x [B, C, F, H, W], t [B, F], cond [B, S, D] -> flow [B, C, F, H, W] in x's dtype."""
        _, ph, pw = self.patch
        tokens_per_frame = (x.shape[-2] // ph) * (x.shape[-1] // pw)
        dtype = self.transformer.dtype
        out = self.transformer(x.to(dtype), t.repeat_interleave(tokens_per_frame, dim=1), cond.to(dtype),
                               return_dict=False)[0]
        return out.to(x.dtype)


WAN_DENOISERS = ("miga", "diffusers")


def wan_bundle_from_modules(transformer: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer, *,
                            where: str | Path = "Wan modules", denoiser: str = "miga",
                            max_length: int = 512) -> ModelBundle:
    """A Wan2.1 bundle over already loaded modules (the folder loader and `miga_fast.diffusers` both end here).

    transformer: our WanDiT, or a diffusers WanTransformer3DModel run as `denoiser` says: "miga" (a WanDiT sharing
    its parameters, per-frame modulation) or "diffusers" (`DiffusersWanDenoiser`). vae: a diffusers
    AutoencoderKLWan (run in its own dtype); text_encoder + tokenizer: transformers' UMT5EncoderModel and its
    tokenizer. Nothing is copied or moved except the codec's per-channel latent statistics (to the VAE's device).
    """
    from .text import UMT5TextEncoder
    from .wan import WanDiT

    require(denoiser in WAN_DENOISERS, "denoiser", f"one of {WAN_DENOISERS}", denoiser)
    if isinstance(transformer, WanDiT):
        require(denoiser == "miga", "denoiser", "'miga' for a WanDiT", denoiser)
        dit, denoise = transformer, transformer.denoise
    elif denoiser == "miga":
        dit = wan_dit_from_diffusers(transformer)
        denoise = dit.denoise
    else:
        dit, denoise = transformer, DiffusersWanDenoiser(transformer).denoise
    config = dit.config
    vae_device = next(vae.parameters()).device
    codec = WanVAECodec(vae).to(vae_device)
    text = UMT5TextEncoder(text_encoder, tokenizer, max_length)
    _check_text_width(where, text_encoder.config.d_model, config.text_dim)
    patch = config.patch_size
    return ModelBundle(denoise=denoise, codec=codec, text=text, family="wan", size=(480, 832),
                       size_multiple=codec.scale_factor * math.lcm(patch[1], patch[2]), shift=5.0,
                       guidance_scale=5.0, negative_prompt=WAN_NEGATIVE_PROMPT, fps=16, module=dit)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def _diffusers_load(cls_name: str, folder: Path) -> nn.Module:
    import diffusers

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json (a diffusers {cls_name} folder)")
    try:
        model = getattr(diffusers, cls_name).from_pretrained(str(folder), torch_dtype=torch.float32,
                                                             local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder}: cannot load the {cls_name}: {err}") from None
    return model.eval()


def _check_text_width(where, text_width: int, expected: int) -> None:
    if text_width != expected:
        raise ValueError(f"{where}: the text encoder outputs width {text_width} but the denoiser expects "
                         f"{expected}: the components do not belong together")


# ----------------------------------------------------------------------------------------------- VideoCrafter2
def load_vc2(path: Path, device="cpu", dtype: torch.dtype = torch.float32, *, tokenizer: str | Path | None = None,
             unet_config=None) -> ModelBundle:
    """A VideoCrafter2 LVDM checkpoint: UNet (model.diffusion_model.*), KL-VAE (first_stage_model.*, run in fp32)
    and OpenCLIP text tower (cond_stage_model.model.*), plus a CLIP BPE tokenizer folder."""
    from .text import OpenCLIPTextModel, load_clip_tokenizer
    from .vc2_unet import VC2UNet

    state = _read_vc2_checkpoint(path)
    parts = {name: {k[len(p):]: v for k, v in state.items() if k.startswith(p)} for name, p in VC2_PREFIXES.items()}
    empty = [VC2_PREFIXES[n] + "*" for n, part in parts.items() if not part]
    if empty:
        sample = sorted(state)[:4]
        raise ValueError(f"{path} is not a VideoCrafter2 checkpoint: no {empty} weights "
                         f"({len(state)} keys, e.g. {sample})")
    tok_dir = Path(tokenizer) if tokenizer is not None else path.parent / "tokenizer"
    if not tok_dir.is_dir():
        how = f"tokenizer={str(tok_dir)!r} does not exist" if tokenizer is not None else \
            f"no tokenizer given and no {tok_dir} folder"
        raise FileNotFoundError(f"VideoCrafter2 checkpoint {path}: {how}. The checkpoint holds no tokenizer: pass "
                                "tokenizer='folder' (or put a tokenizer/ folder next to the checkpoint) with the "
                                "OpenCLIP/CLIP BPE files vocab.json and merges.txt (e.g. the tokenizer/ folder of "
                                "stabilityai/stable-diffusion-2-1 or laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")
    clip_tokenizer = load_clip_tokenizer(tok_dir)
    unet = VC2UNet.from_checkpoint(state, unet_config, dtype, device=device)
    codec = KLVAECodec.from_ldm(parts["vae"], where=str(path)).to(device)
    text_model = OpenCLIPTextModel.from_state_dict(parts["text"], where=str(path), dtype=dtype).to(device)
    return vc2_bundle_from_modules(unet, codec.vae, text_model, clip_tokenizer, where=path)


def vc2_bundle_from_modules(unet: nn.Module, vae: nn.Module, text_model: nn.Module, tokenizer, *,
                            where: str | Path = "VideoCrafter2 modules") -> ModelBundle:
    """A VideoCrafter2 bundle over already loaded modules (the checkpoint loader and `miga_fast.diffusers` both end
    here): our VC2UNet, a diffusers AutoencoderKL (its config's scaling_factor, 0.18215 from a checkpoint), our
    OpenCLIPTextModel (penultimate layer) and a CLIP tokenizer. Nothing is copied."""
    from .text import OpenCLIPTextEncoder

    vae_device = next(vae.parameters()).device
    codec = KLVAECodec(vae).to(vae_device)
    text = OpenCLIPTextEncoder(text_model, tokenizer, layer="penultimate")
    _check_text_width(where, text_model.ln_final.normalized_shape[0], unet.config.context_dim)
    return ModelBundle(denoise=unet.denoise, codec=codec, text=text, family="vc2", size=(320, 512),
                       size_multiple=codec.scale_factor * unet.config.downsample_factor, guidance_scale=12.0,
                       negative_prompt="", fps=8, module=unet)


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise ValueError(f"{path}: cannot read the checkpoint ({err})") from None
    return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zipfile) format: no mmap


def _read_vc2_checkpoint(path: Path) -> dict[str, Tensor]:
    """The flat tensor dict of an LVDM checkpoint (torch file: weights only, memory-mapped; or safetensors)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = _torch_load(path)
        except pickle.UnpicklingError:
            raise ValueError(f"{path} cannot be read by a weights-only torch.load: it is damaged or holds objects "
                             "other than tensors and plain containers (then re-save its 'state_dict' alone: "
                             "torch.save({'state_dict': ckpt['state_dict']}, path))") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors (got {type(state).__name__})")
    for wrapper in ("state_dict", "module"):  # Lightning / DeepSpeed wrappers, as VideoCrafter's loader
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    return {k.removeprefix("_forward_module."): v for k, v in state.items() if isinstance(v, Tensor)}
