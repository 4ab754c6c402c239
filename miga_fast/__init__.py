"""miga_fast: a runtime for train-free infinite-frame video generation (FIFO-Diffusion + MIGA).

Importing the package needs only torch; GPU, Triton, TensorRT, diffusers and video I/O are
imported lazily by the pieces that use them.
"""

__version__ = "0.1.0"

from .errors import ConfigError  # noqa: E402
from .plan import PRESETS, PlanConfig, preset  # noqa: E402

__all__ = ["ConfigError", "PRESETS", "PlanConfig", "preset", "__version__"]
