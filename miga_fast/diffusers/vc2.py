"""`MigaVC2Pipeline`: VideoCrafter2 as a diffusers pipeline, rendered with a miga_fast queue.

    pipe = MigaVC2Pipeline.from_pretrained("VideoCrafter2/model.ckpt", tokenizer="VideoCrafter2/tokenizer")
    video = pipe(prompt, num_frames=1000, generator=torch.Generator().manual_seed(0)).frames[0]

diffusers has no VideoCrafter2 UNet or OpenCLIP text tower, so the components are our loader's modules
(`miga_fast.models.load.load_vc2`): unet (VC2UNet), vae (diffusers AutoencoderKL, fp32), text_encoder
(OpenCLIPTextModel, penultimate layer), tokenizer (CLIPTokenizer) and a DDIMScheduler with VideoCrafter2's
training schedule, kept for diffusers' sake (our DDIM solver runs: the FIFO/MIGA table, see DESIGN.md 2.2).
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.video_processor import VideoProcessor

from ..models.load import ModelBundle, load_vc2, vc2_bundle_from_modules
from ..models.text import OpenCLIPTextModel
from ..models.vc2_unet import VC2UNet
from .pipeline import MigaPipelineBase


def vc2_scheduler() -> DDIMScheduler:
    """VideoCrafter2's training schedule: betas linear in sqrt space 0.00085 -> 0.012, 1000 steps, eps."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")


class MigaVC2Pipeline(MigaPipelineBase):
    """VideoCrafter2 (LVDM checkpoint) with the call signature of `MigaWanPipeline` (see
    `MigaPipelineBase.__call__`); default size 320 x 512, CFG 12, modes fifo | miga | miga-stream."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    default_height, default_width = 320, 512

    def __init__(self, unet: VC2UNet, vae: AutoencoderKL, text_encoder: OpenCLIPTextModel, tokenizer,
                 scheduler: DDIMScheduler):
        # scheduler is required (diffusers' from_pipe passes only components without a default)
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.vae_scale_factor_spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    @classmethod
    def from_pretrained(cls, checkpoint: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                        unet_config=None, torch_dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> MigaVC2Pipeline:
        """An LVDM checkpoint (model.ckpt / .safetensors) through `miga_fast.models.load.load_vc2`: tokenizer
        (CLIP vocab.json + merges.txt folder, default tokenizer/ next to it), unet_config (a VC2Config, default
        VideoCrafter2 512 v2.0), torch_dtype (UNet and text tower; the VAE stays fp32)."""
        from pathlib import Path

        from ..pipeline import check_device

        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"VideoCrafter2 checkpoint {str(path)!r} does not exist")
        bundle = load_vc2(path, check_device(device), torch_dtype, tokenizer=tokenizer, unet_config=unet_config)
        return cls(unet=bundle.module, vae=bundle.codec.vae, text_encoder=bundle.text.model,
                   tokenizer=bundle.text.tokenizer, scheduler=vc2_scheduler())

    def _build_bundle(self) -> ModelBundle:
        return vc2_bundle_from_modules(self.unet, self.vae, self.text_encoder, self.tokenizer,
                                       where=type(self).__name__)

    @property
    def device(self) -> torch.device:
        # diffusers reads `module.device`, which only its ModelMixin modules have; VC2UNet is a plain nn.Module
        return next(self.unet.parameters()).device

    def _denoiser_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype
