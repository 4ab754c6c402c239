"""The training objective of the bundled model: the pool of world clips it learns from, and how a clip is noised
(one level per clip, the short-clip training condition) for each architecture's prediction target.

Shared by training (`train.py`) and the held-out loss (`heldout.py`), so both measure the same objective.
"""

from __future__ import annotations

import random

import torch
from tqdm import tqdm

from .bundle import TinySpec, vc2_table
from .world import sample_clips


class ClipPool:
    """A pool of rendered clips (uint8) refreshed a few clips per step: rendering is not free on 2 cores."""

    def __init__(self, size: int, frames: int, res: int, rng: random.Random):
        self.frames, self.res, self.rng = frames, res, rng
        clips, prompts = [], []
        for _ in tqdm(range(0, size, 32), desc="rendering clip pool", leave=False):
            c, p = sample_clips(32, frames, res, rng)
            clips.append(self._quantise(c))
            prompts += p
        self.clips, self.prompts = torch.cat(clips)[:size], prompts[:size]

    @staticmethod
    def _quantise(c):
        return ((c + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def refresh(self, count: int) -> None:
        c, p = sample_clips(count, self.frames, self.res, self.rng)
        for k in range(count):
            i = self.rng.randrange(len(self.prompts))
            self.clips[i], self.prompts[i] = self._quantise(c[k]), p[k]

    def batch(self, n: int, window: int) -> tuple[torch.Tensor, list[str]]:
        """n random windows of `window` frames: [n, 3, window, H, W] in [-1, 1], and their prompts."""
        idx = [self.rng.randrange(len(self.prompts)) for _ in range(n)]
        starts = [self.rng.randrange(self.frames - window + 1) for _ in range(n)]
        x = torch.stack([self.clips[i, :, s : s + window] for i, s in zip(idx, starts, strict=True)])
        return x.float() / 127.5 - 1, [self.prompts[i] for i in idx]


def shifted_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Flow-matching sigma from uniform u with the schedule's shift (more weight on high noise)."""
    return shift * u / (1 + (shift - 1) * u)


_ALPHAS_CUMPROD = vc2_table()  # [1000], VideoCrafter2's DDPM table


def noised(spec: TinySpec, x0: torch.Tensor, u: torch.Tensor, eps: torch.Tensor,
           shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean clips ``x0 [n, 3, F, H, W]`` noised at one level per clip, from uniform ``u [n]`` and noise ``eps``:
    ``(x_t, t [n, F], target)``. Flow (arch "wan"): sigma = shifted u, x_t = (1 - s) x0 + s eps, target eps - x0,
    t = 1000 sigma. Arch "vc2": DDPM step t = floor(1000 u), x_t = sqrt(acp) x0 + sqrt(1 - acp) eps, target the
    UNet's own output (`spec.unet_target`): eps, or v = sqrt(acp) eps - sqrt(1 - acp) x0."""
    frames = x0.shape[2]
    if spec.prediction == "flow":
        sigma = shifted_sigma(u, shift)
        s = sigma.view(-1, 1, 1, 1, 1)
        return (1 - s) * x0 + s * eps, (sigma * 1000).view(-1, 1).expand(-1, frames), eps - x0
    step = (u * 1000).long().clamp(max=999)
    a = _ALPHAS_CUMPROD[step].view(-1, 1, 1, 1, 1)
    target = eps if spec.unet_target == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, step.float().view(-1, 1).expand(-1, frames), target


def training_noise(x0: torch.Tensor, offset: float) -> torch.Tensor:
    """Gaussian noise like ``x0 [n, C, F, H, W]`` plus ``offset`` x a Gaussian constant per (clip, channel, frame).

    Why: VideoCrafter2's table leaves signal at t = 999 (sqrt(alpha_bar) = 0.068), so a model trained on plain
    noise learns to read each frame's colour from the mean of its input; sampling starts from noise whose
    per-frame means are random (std 0.03 at 32x32) and the colour of each frame follows them (correlation 0.80
    for the 812-step UNet). An offset makes that mean unreliable in training, so the colour has to come from the
    prompt; the sampler is unchanged (plain noise, the same DDIM). Measured: 0.1 from step 812 on had not broken
    the link by step ~3,000 (r = 0.78; bench/results/quality/unet_training/README.md)."""
    eps = torch.randn_like(x0)
    if offset:
        eps = eps + offset * torch.randn(*x0.shape[:3], 1, 1)
    return eps
