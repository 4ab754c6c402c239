"""The self-reflection consistency score of the official MIGA code."""

from __future__ import annotations

import torch
from torch import Tensor


def group_vector(latents: Tensor) -> Tensor:
    """latents [M, C, H, W] -> unit vector [H*W]: the mean over latents AND channels, flattened.

    Official quirk: `adjust_judge` concatenates the [1, C, 1, H, W] latents along dim 1 before
    averaging dim 1, so it pools the whole group into one vector rather than one per frame.
    """
    v = latents.float().mean(dim=(0, 1)).flatten()
    return v / v.norm().clamp_min(1e-12)


def group_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of the pooled vectors of two latent groups: a 0-dim tensor (no host sync)."""
    return torch.dot(group_vector(a), group_vector(b))
