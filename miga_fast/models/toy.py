"""A tiny deterministic denoiser for engine tests and benchmarks (no training, no weights file).

Per-frame time dependence (sinusoidal embedding of each frame's timestep), local cross-frame
mixing (a 3x3x3 conv) and global cross-frame mixing (window mean), so window order, grouping and
per-frame timesteps all change the output, as with a real video model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """t [...] (float timesteps) -> [..., dim] cos/sin features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ToyDenoiser(nn.Module):
    """denoise(x [B, C, F, H, W], t [B, F], cond [B, S, D]) -> prediction [B, C, F, H, W]."""

    def __init__(self, channels: int = 4, cond_dim: int = 8, time_dim: int = 16, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.time_dim = time_dim
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)
        self.time = nn.Linear(time_dim, channels)
        self.cond = nn.Linear(cond_dim, channels)
        self.mix = nn.Parameter(torch.empty(channels, channels))
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / math.sqrt(max(p[0].numel(), 1))))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        temb = self.time(sinusoidal_embedding(t / 1000.0 * 64, self.time_dim))  # [B, F, C]
        h = x + temb.permute(0, 2, 1)[..., None, None].to(x.dtype)
        h = self.conv(h) + self.cond(cond.mean(1))[:, :, None, None, None].to(x.dtype)
        window_mean = torch.einsum("oc,bcfhw->bofhw", self.mix, x.mean(2, keepdim=True))
        return torch.tanh(h + window_mean) + 0.1 * x

    denoise = forward
