"""`MigaWanPipeline`: diffusers' WanPipeline components, rendered with a miga_fast queue.

    pipe = MigaWanPipeline.from_pipe(WanPipeline.from_pretrained(folder))   # shares every module, no copy
    pipe = MigaWanPipeline.from_pretrained(folder)                          # a diffusers Wan2.1 T2V folder
    video = pipe(prompt, num_frames=1000, generator=torch.Generator().manual_seed(0)).frames[0]

Denoiser (`denoiser=`): "miga" (default) runs our `WanDiT` over the diffusers transformer's own Parameter
objects (`models.load.wan_dit_from_diffusers`: same storage, so the same weights and nothing copied), with
per-frame adaLN modulation [B, F, 6, dim]; "diffusers" runs `WanTransformer3DModel.forward` itself, which
takes per-token timesteps [B, tokens] (its Wan2.2 TI2V path) and so builds [B, tokens, 6, dim] modulation
tensors (`models.load.DiffusersWanDenoiser`). Both compute the same flow (to float rounding). "miga" is the
default because it is faster and smaller: on a small random Wan config on this 2-core CPU (fp32, one thread,
2 blocks of width 256, CFG batch 2, a 21-latent window of 16x26 latents = 2184 tokens; `python
bench/diffusers_denoiser.py` -> bench/results/diffusers/denoiser.csv) one window call takes x1.20 the time with
"diffusers" (x1.18 at 504 tokens; medians of 7 interleaved runs in one process), and at Wan2.1-1.3B 480p the
per-token tensor is ~1.2 GB per call that "miga" never allocates
(DESIGN.md 2.1). The scheduler component is kept for diffusers' sake and not used: our solvers run (flow UniPC,
shift 5 as MIGA-Wan).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.video_processor import VideoProcessor
from transformers import AutoTokenizer, UMT5EncoderModel

from ..models.load import WAN_DENOISERS, ModelBundle, wan_bundle_from_modules
from .pipeline import MigaPipelineBase


class MigaWanPipeline(MigaPipelineBase):
    """A WanPipeline whose `__call__` renders `num_frames` (any number) with a miga_fast queue, and `stream()`.

    Components as WanPipeline's (tokenizer, text_encoder: umT5, vae: AutoencoderKLWan, scheduler: unused,
    transformer: WanTransformer3DModel); `denoiser`: "miga" | "diffusers", see the module doc. Wan2.2 (a
    transformer_2, boundary_ratio, expand_timesteps) is rejected. Calls: see `MigaPipelineBase.__call__`.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["transformer_2"]
    default_height, default_width = 480, 832

    def __init__(self, tokenizer: AutoTokenizer, text_encoder: UMT5EncoderModel, vae: AutoencoderKLWan,
                 scheduler: FlowMatchEulerDiscreteScheduler, transformer: WanTransformer3DModel,
                 transformer_2: WanTransformer3DModel | None = None, boundary_ratio: float | None = None,
                 expand_timesteps: bool = False, denoiser: str = "miga"):
        super().__init__()
        if not isinstance(transformer, WanTransformer3DModel):
            raise ValueError(f"`transformer` has to be a WanTransformer3DModel (Wan2.1 T2V) but is "
                             f"{type(transformer).__name__}")
        for name, value, default in (("transformer_2", transformer_2, None), ("boundary_ratio", boundary_ratio, None),
                                     ("expand_timesteps", expand_timesteps, False)):
            if value is not default:
                raise ValueError(f"`{name}` has to be {default} (Wan2.1 text-to-video; Wan2.2 two-expert / TI2V "
                                 f"pipelines are not supported) but is {type(value).__name__}")
        if denoiser not in WAN_DENOISERS:
            raise ValueError(f"`denoiser` has to be one of {list(WAN_DENOISERS)} but is {denoiser!r}")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                              scheduler=scheduler, transformer_2=None)
        self.register_to_config(denoiser=denoiser)
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    def _build_bundle(self) -> ModelBundle:
        return wan_bundle_from_modules(self.transformer, self.vae, self.text_encoder, self.tokenizer,
                                       where=type(self).__name__, denoiser=self.config.denoiser)

    def _denoiser_dtype(self) -> torch.dtype:
        return self.transformer.dtype
