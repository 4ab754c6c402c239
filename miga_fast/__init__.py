"""miga_fast: a runtime for train-free infinite-frame video generation (FIFO-Diffusion + MIGA).

Importing the package needs only torch; GPU, Triton, TensorRT, diffusers and video I/O are
imported lazily by the pieces that use them.
"""

__version__ = "0.1.0"

from .errors import ConfigError  # noqa: E402
from .plan import PRESETS, PlanConfig, preset  # noqa: E402

__all__ = ["ConfigError", "PRESETS", "PlanConfig", "load", "load_default", "preset", "__version__"]


def load(*args, **kwargs):
    """Load a model into a VideoGenerator: the bundled-model .safetensors format, a VideoCrafter2 model.ckpt
    (+ tokenizer/ folder) or a diffusers Wan2.1 T2V folder (see miga_fast.pipeline.load)."""
    from .pipeline import load as _load

    return _load(*args, **kwargs)


def load_default(*args, **kwargs):
    """The bundled model as a VideoGenerator (see miga_fast.pipeline.load_default)."""
    from .pipeline import load_default as _load_default

    return _load_default(*args, **kwargs)
