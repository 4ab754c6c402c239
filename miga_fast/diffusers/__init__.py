"""A drop-in backend for diffusers: pipelines whose call renders any number of frames with a miga_fast queue.

    from diffusers import WanPipeline
    from diffusers.utils import export_to_video
    from miga_fast.diffusers import MigaWanPipeline

    pipe = MigaWanPipeline.from_pipe(WanPipeline.from_pretrained("Wan2.1-T2V-1.3B-Diffusers"))  # no weight copy
    export_to_video(pipe("a cat surfing", num_frames=1000).frames[0], "cat.mp4", fps=16)

Needs the `[diffusers]` extra (diffusers, transformers, accelerate). See `MigaPipelineBase.__call__` for the
arguments, `miga_seed` for how a `torch.Generator` seeds the video.
"""

from .pipeline import MigaPipelineBase, miga_seed
from .vc2 import MigaVC2Pipeline
from .wan import MigaWanPipeline

__all__ = ["MigaPipelineBase", "MigaVC2Pipeline", "MigaWanPipeline", "miga_seed"]
