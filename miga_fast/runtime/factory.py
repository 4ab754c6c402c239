"""The one place a solver and an engine are built from a model bundle and a plan config.

Every caller (pipeline, quality study, benches) goes through `make_engine`, so the solver rule (flow solvers take
the bundle's sigma shift; DDIM none) and the defaults (the bundle's CFG scale and latent shape) are written once.
"""

from __future__ import annotations

from collections.abc import Callable

from ..plan import PlanConfig
from ..solvers import solver_for
from .engine import Engine


def make_engine(bundle, cfg: PlanConfig, *, size: tuple[int, int] | None = None, denoise: Callable | None = None,
                latent_shape: tuple[int, int, int] | None = None, guidance_scale: float | None = None,
                **engine_kw) -> Engine:
    """An `Engine` for `bundle` (anything with `denoise`, `shift`, `guidance_scale`, `latent_shape(size)`, e.g.
    `models.load.ModelBundle`) running `cfg`.

    size: frame (H, W), default the bundle's; denoise: a wrapper of the bundle's denoiser (e.g. packed videos, a
    timing probe); latent_shape: overrides the one `size` gives (packed videos); guidance_scale: default the
    bundle's; engine_kw: the rest of `Engine`'s keywords (cond, uncond, seed, device, dtype, mode, ...).
    """
    return Engine(denoise or bundle.denoise, solver_for(cfg, bundle.shift), cfg,
                  latent_shape or bundle.latent_shape(size),
                  guidance_scale=bundle.guidance_scale if guidance_scale is None else guidance_scale, **engine_kw)
