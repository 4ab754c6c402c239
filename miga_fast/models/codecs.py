"""Codecs: pixels <-> the latents a denoiser works in, with a streaming decoder for unbounded videos.

    codec.encode(frames [B, 3, F, H, W] in [-1, 1]) -> latents [B, C, F', H/s, W/s]
    codec.decode(latents [B, C, F', h, w])          -> frames [B, 3, F, h*s, w*s]
    dec = codec.stream_decoder()
    dec.push(latent [C, h, w]) -> list of finished frames [3, H, W]; dec.flush() -> the rest

`s` is `scale_factor`; a latent decodes to `frames_per_latent` frames (the Wan VAE: the first latent of a
stream to 1 frame, every later one to 4). Implementations: `IdentityCodec` (pixel space, the bundled model),
`KLVAECodec` (VideoCrafter2: SD-2.1 KL-VAE applied frame by frame), `WanVAECodec` (Wan2.1 causal 3D VAE,
decoded latent by latent with its feature cache, so a stream decodes in constant memory).
Frames are returned unclamped by the KL-VAE (as VideoCrafter2 decodes) and clamped to [-1, 1] by the Wan VAE
(as diffusers decodes); the pipeline clamps before converting to uint8 either way.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

# VideoCrafter2's first stage is the Stable Diffusion 2.1 KL-VAE (LDM ddconfig ch=128, ch_mult=[1,2,4,4],
# num_res_blocks=2, z_channels=4, no attention outside the mid blocks); its latents are scaled by 0.18215.
VC2_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


def ldm_vae_config(state: dict[str, Tensor], where: str = "checkpoint") -> dict:
    """diffusers ``AutoencoderKL`` config of LDM-layout KL-VAE weights (keys without ``first_stage_model.``)."""
    if "encoder.conv_in.weight" not in state or "post_quant_conv.weight" not in state:
        raise ValueError(f"{where}: no KL-VAE weights (expected first_stage_model.encoder.conv_in.weight and "
                         "first_stage_model.post_quant_conv.weight, the LDM AutoencoderKL layout)")
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    blocks = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block."))
    return dict(VC2_VAE_CONFIG, **dict(
        in_channels=state["encoder.conv_in.weight"].shape[1],
        out_channels=state["decoder.conv_out.weight"].shape[0],
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=[state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)],
        layers_per_block=blocks,
        latent_channels=state["post_quant_conv.weight"].shape[0],
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in state,
    ))


def _check_frames(frames: Tensor, what: str) -> None:
    if frames.dim() != 5 or frames.shape[1] != 3:
        raise ValueError(f"{what} must be [B, 3, F, H, W] in [-1, 1] (got {tuple(frames.shape)})")


def _check_latents(latents: Tensor, channels: int, what: str) -> None:
    if latents.dim() != 5 or latents.shape[1] != channels:
        raise ValueError(f"{what} must be [B, {channels}, F, h, w] (got {tuple(latents.shape)})")


class StreamDecoder(abc.ABC):
    """Decodes one stream of latents pushed in order; holds only what the next latent needs."""

    @abc.abstractmethod
    def push(self, latent: Tensor) -> list[Tensor]:
        """latent [C, h, w] -> the frames [3, H, W] it finishes (possibly none), in order."""

    def flush(self) -> list[Tensor]:
        """Frames still held back at the end of the stream (none for the codecs here)."""
        return []

    def state(self) -> dict:
        """What the next `push` depends on, as host data (tensors copied to the CPU): saved in render checkpoints."""
        return {}

    def load_state(self, state: dict) -> None:  # noqa: B027 (stateless by default)
        """Go on from a `state()` of a decoder of the same codec."""


class _PerLatentDecoder(StreamDecoder):
    """For codecs without temporal state: each latent decodes on its own."""

    def __init__(self, codec: Codec):
        self.codec = codec

    def push(self, latent: Tensor) -> list[Tensor]:
        return list(self.codec.decode(latent[None, :, None])[0].unbind(1))


class Codec(nn.Module, abc.ABC):
    """Base class: `latent_channels`, spatial `scale_factor`, `frames_per_latent`; see the module doc."""

    latent_channels: int
    scale_factor: int
    frames_per_latent: int

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @abc.abstractmethod
    def encode(self, frames: Tensor) -> Tensor:
        """frames [B, 3, F, H, W] in [-1, 1] -> latents [B, C, F', H/s, W/s] (the posterior mean)."""

    @abc.abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, C, F', h, w] -> frames [B, 3, F, h*s, w*s] (float, ~[-1, 1])."""

    def stream_decoder(self) -> StreamDecoder:
        """A fresh decoder for one stream of latents (see `StreamDecoder`)."""
        return _PerLatentDecoder(self)

    def latent_of(self, frame: int) -> int:
        """Index of the latent that decodes to output frame `frame` (both counted from 0 in one stream)."""
        return frame // self.frames_per_latent

    def latents_for(self, frames: int) -> int:
        """Latents a stream needs to produce `frames` frames."""
        return self.latent_of(frames - 1) + 1


class IdentityCodec(Codec):
    """Pixel space: the latent is the frame. latent_channels 3, scale_factor 1, one frame per latent."""

    latent_channels, scale_factor, frames_per_latent = 3, 1, 1

    def encode(self, frames: Tensor) -> Tensor:
        _check_frames(frames, "frames")
        return frames.clone()

    def decode(self, latents: Tensor) -> Tensor:
        _check_latents(latents, 3, "latents")
        return latents.clone()


class KLVAECodec(Codec):
    """A 2D KL-VAE (diffusers ``AutoencoderKL``) applied frame by frame, latents scaled by `scaling_factor`.

    As VideoCrafter2's ``decode_first_stage_2DAE``: ``decode(z / 0.18215)`` one frame at a time, so memory
    does not depend on the clip length. `encode` returns the posterior mean (LDM samples it).
    """

    frames_per_latent = 1

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None):
        super().__init__()
        self.vae = vae.eval()
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor if scaling_factor is None else scaling_factor)
        self.latent_channels = cfg.latent_channels
        self.scale_factor = 2 ** (len(cfg.block_out_channels) - 1)

    @classmethod
    def from_ldm(cls, state: dict[str, Tensor], where: str = "checkpoint",
                 scaling_factor: float = VC2_VAE_CONFIG["scaling_factor"]) -> KLVAECodec:
        """From LDM-layout first-stage weights (``encoder.down.0.block.0.conv1.weight``..., no prefix).

        The layout (widths, blocks per level, latent channels, mid attention) is read from the shapes;
        GroupNorm uses 32 groups as in every LDM KL-VAE. Keys are converted with diffusers'
        ``convert_ldm_vae_checkpoint``; missing or wrongly shaped weights raise one ValueError naming them.
        """
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        config = ldm_vae_config(state, where)
        config["scaling_factor"] = scaling_factor
        converted = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in state.items()}, config)
        with torch.device("meta"):
            vae = AutoencoderKL(**config)
        expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in converted.items() if v is not None}
        missing = sorted(expected.keys() - found.keys())
        shapes = [f"{k}: {found[k]} vs {expected[k]}" for k in sorted(expected.keys() & found.keys())
                  if found[k] != expected[k]]
        if missing or shapes:
            raise ValueError(f"{where}: KL-VAE (first_stage_model) weights do not match the layout read from their "
                             f"shapes: {len(missing)} missing (e.g. {missing[:3]}), {len(shapes)} wrong-shape "
                             f"(e.g. {shapes[:3]})")
        vae.load_state_dict({k: converted[k].float() for k in expected}, strict=True, assign=True)
        return cls(vae)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        _check_frames(frames, "frames")
        x = frames.to(self.device, self.dtype)
        z = torch.stack([self.vae.encode(x[:, :, i]).latent_dist.mode() for i in range(x.shape[2])], dim=2)
        return z * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        _check_latents(latents, self.latent_channels, "latents")
        z = latents.to(self.device, self.dtype) / self.scaling_factor
        return torch.stack([self.vae.decode(z[:, :, i]).sample for i in range(z.shape[2])], dim=2)


class _WanStreamDecoder(StreamDecoder):
    """diffusers ``AutoencoderKLWan._decode``'s loop over latent frames, one `push` per iteration.

    The loop's state is the feature cache (one entry per causal conv of the decoder, each at most the last
    2 time steps of that conv's input) and whether the next latent is the first; it is kept here instead
    of on the VAE, so several streams can decode with one VAE and memory is constant for any length.
    """

    def __init__(self, codec: WanVAECodec):
        self.codec = codec
        self.cache: list = [None] * codec.num_causal_convs
        self.first = True

    @torch.no_grad()
    def push(self, latent: Tensor) -> list[Tensor]:
        c = self.codec
        if latent.dim() != 3 or latent.shape[0] != c.latent_channels:
            raise ValueError(f"latent must be [{c.latent_channels}, h, w] (got {tuple(latent.shape)})")
        z = c.denormalize(latent[None, :, None])
        # post_quant_conv is a 1x1x1 causal conv: per latent it equals the whole-clip call (up to conv rounding)
        x = c.vae.post_quant_conv(z)
        out = c.vae.decoder(x, feat_cache=self.cache, feat_idx=[0], first_chunk=self.first)
        self.first = False
        out = c.unpatchify(out).clamp(-1.0, 1.0)
        return list(out[0].unbind(1))

    def state(self) -> dict:
        cache = [t.cpu().clone() if isinstance(t, Tensor) else t for t in self.cache]
        return {"cache": cache, "first": self.first}

    def load_state(self, state: dict) -> None:
        if len(state["cache"]) != len(self.cache):
            raise ValueError(f"decoder state has {len(state['cache'])} cache entries, this VAE {len(self.cache)}")
        device = self.codec.mean.device
        self.cache = [t.to(device) if isinstance(t, Tensor) else t for t in state["cache"]]
        self.first = bool(state["first"])

    def cache_numel(self) -> int:
        """Elements held in the feature cache (constant after the second latent)."""
        return sum(t.numel() for t in self.cache if isinstance(t, Tensor))


class WanVAECodec(Codec):
    """Wan2.1 causal 3D VAE (diffusers ``AutoencoderKLWan``); latents normalised as the Wan DiT expects.

    Normalised latent = (VAE latent - latents_mean) / latents_std, per channel (diffusers' WanPipeline
    decodes ``latents / (1 / std) + mean``). F frames encode to 1 + (F - 1) / 4 latents; when streaming,
    the first latent decodes to 1 frame and every later one to `frames_per_latent` (4).
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval()
        cfg = vae.config
        self.latent_channels = cfg.z_dim
        self.patch = cfg.patch_size or 1
        self.scale_factor = 2 ** (len(cfg.dim_mult) - 1) * self.patch
        self.frames_per_latent = 2 ** sum(bool(t) for t in cfg.temperal_downsample)
        self.register_buffer("mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1))
        # diffusers' WanPipeline divides by 1/std: the same float32 rounding here
        self.register_buffer("inv_std", 1.0 / self.std)
        if self.mean.shape[1] != self.latent_channels or self.std.shape[1] != self.latent_channels:
            raise ValueError(f"Wan VAE config: latents_mean and latents_std must have z_dim={self.latent_channels} "
                             f"entries (got {self.mean.shape[1]} and {self.std.shape[1]})")
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.num_causal_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def denormalize(self, latents: Tensor) -> Tensor:
        """Normalised [B, C, F, h, w] -> the VAE's own latents, in the VAE's dtype and device."""
        z = latents.to(self.mean.device, torch.float32) / self.inv_std + self.mean
        return z.to(self.dtype)

    def unpatchify(self, x: Tensor) -> Tensor:
        if self.patch == 1:
            return x
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        return unpatchify(x, self.patch)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        _check_frames(frames, "frames")
        if (frames.shape[2] - 1) % self.frames_per_latent:
            raise ValueError(f"frames: the Wan VAE encodes 1 + {self.frames_per_latent}k frames "
                             f"(got F={frames.shape[2]})")
        z = self.vae.encode(frames.to(self.mean.device, self.dtype)).latent_dist.mode()
        return (z.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Whole-clip decode (diffusers ``vae.decode``): [B, C, n, h, w] -> [B, 3, 1 + 4(n-1), H, W]."""
        _check_latents(latents, self.latent_channels, "latents")
        return self.vae.decode(self.denormalize(latents)).sample

    def stream_decoder(self) -> _WanStreamDecoder:
        return _WanStreamDecoder(self)

    def latent_of(self, frame: int) -> int:
        # latent 0 -> frame 0, latent k >= 1 -> frames 4k-3 .. 4k
        return (frame + self.frames_per_latent - 1) // self.frames_per_latent
