"""Train-inference gap probe: how much worse does the denoiser get when a window mixes noise levels?

The bundled model is trained with every frame of a clip at ONE noise level. FIFO-Diffusion feeds
it diagonal windows (one level per frame), MIGA's zigzag queue blocks of L frames per level. On
held-out clips rendered from the world (fresh seeds), we noise a window to a level pattern and
measure the model's own training error per frame (flow: ``mean_{C,H,W} (v_pred - (eps - x0))^2``; epsilon:
``(eps_pred - eps)^2``), with the levels of its presets' solver (flow UniPC / DDIM), then compare
it with the error of the SAME frame at the SAME level inside a window where every frame sits at
that level (training condition). Per-frame matching makes the average level exactly equal, so the
ratio isolates the effect of the mix. Patterns: ``levels[k] = start + (k // block) * step`` for
frame k of the window (frame 0 = head = least noisy, as in the queues); span = max - min level.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..models.tiny.world import sample_clips
from ..plan import PRESETS
from ..solvers import solver_for

HELDOUT_SEED = 1_000_003  # training draws clips from random.Random(seed=0); this stream is disjoint


@dataclass(frozen=True)
class LevelPattern:
    """`block` frames per level, consecutive blocks `step` levels apart."""

    name: str
    block: int
    step: int

    def levels(self, start: int, window: int) -> list[int]:
        return [start + (k // self.block) * self.step for k in range(window)]

    def span(self, window: int) -> int:
        return (window // self.block - 1) * self.step


def level_patterns(window: int, steps: tuple[int, ...] = (1, 2)) -> list[LevelPattern]:
    """Flat, zigzag (every divisor block 1 < L < f0) and FIFO diagonal (L = 1), each at `steps`."""
    out = [LevelPattern("flat", window, 1)]
    for step in steps:
        suffix = "" if step == 1 else f" x{step}"
        for block in sorted((b for b in range(2, window) if window % b == 0), reverse=True):
            out.append(LevelPattern(f"zigzag L={block}{suffix}", block, step))
        out.append(LevelPattern(f"fifo diagonal{suffix}", 1, step))
    return out


def heldout_clips(count: int, frames: int, size: int, seed: int = 0) -> tuple[Tensor, list[str]]:
    """Held-out world clips [count, 3, frames, size, size] in [-1, 1] and their prompts."""
    return sample_clips(count, frames, size, random.Random(HELDOUT_SEED + seed))


@torch.no_grad()
def _errors(model, x0: Tensor, eps: Tensor, levels: Tensor, cond: Tensor, solver, batch: int) -> Tensor:
    """Per-frame training MSE [W, F] of windows at levels [W, F] built from one clip x0/eps [3, F, H, W]."""
    frames = x0.transpose(0, 1)  # [F, 3, H, W]: the solver noises latents (frames) one level each
    target = eps if solver.prediction == "eps" else eps - x0
    out = []
    for i in range(0, len(levels), batch):
        lv = levels[i : i + batch]
        b, f = lv.shape
        xt = solver.add_noise(frames.repeat(b, 1, 1, 1), eps.transpose(0, 1).repeat(b, 1, 1, 1), lv.flatten())
        xt = xt.view(b, f, *xt.shape[1:]).transpose(1, 2)  # [B, 3, F, H, W]
        t = solver.model_timesteps(lv.flatten()).view(lv.shape)
        pred = model.denoise(xt, t, cond.expand(b, *cond.shape[1:]))
        out.append((pred - target).pow(2).mean((1, 3, 4)))
    return torch.cat(out)


@torch.no_grad()
def probe_gap(model, clips: int = 16, num_steps: int = 16, seed: int = 0,
              patterns: list[LevelPattern] | None = None, batch: int = 32) -> list[dict]:
    """One row per (clip, pattern, start level): mixed-window error vs per-frame matched flat error.

    model: anything with `.spec` (frame_size, window, shift, family), `.text.encode` and `.denoise`
    (TinyVideoModel). Same noise for every pattern of a clip, so comparisons between patterns are paired.
    """
    f0, size = model.spec.window, model.spec.frame_size
    preset = dataclasses.replace(PRESETS[f"{model.spec.family}-fifo"], num_steps=num_steps)
    solver = solver_for(preset, model.spec.shift)  # the presets' solver: flow UniPC (DiT) or DDIM (UNet)
    patterns = patterns or level_patterns(f0)
    x, prompts = heldout_clips(clips, f0, size, seed)
    gen = torch.Generator().manual_seed(HELDOUT_SEED + seed)
    rows = []
    for c in range(clips):
        x0 = x[c]
        eps = torch.randn(x0.shape, generator=gen)
        cond = model.text.encode([prompts[c]])
        flat = _errors(model, x0, eps, torch.arange(num_steps)[:, None].expand(num_steps, f0), cond, solver, batch)
        windows, meta = [], []
        for p in patterns:
            if p.block == f0:
                continue  # flat windows are the reference itself
            for start in range(num_steps - p.span(f0)):
                windows.append(p.levels(start, f0))
                meta.append((p, start))
        levels = torch.tensor(windows)
        mixed = _errors(model, x0, eps, levels, cond, solver, batch)
        matched = flat[levels, torch.arange(f0)]  # [W, F]: same frame, same level, flat window
        for (p, start), lv, m, ref in zip(meta, windows, mixed, matched, strict=True):
            rows.append({"clip": c, "pattern": p.name, "block": p.block, "step": p.step, "span": p.span(f0),
                         "start": start, "mean_level": float(np.mean(lv)), "mixed_mse": float(m.mean()),
                         "flat_mse": float(ref.mean())})
        for start in range(num_steps):
            e = float(flat[start].mean())
            rows.append({"clip": c, "pattern": "flat", "block": f0, "step": 1, "span": 0, "start": start,
                         "mean_level": float(start), "mixed_mse": e, "flat_mse": e})
    return rows


def summarise_gap(rows: list[dict], resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Per pattern: mean mixed / matched-flat MSE and their ratio, with a 95% bootstrap interval over clips.

    The ratio is sum(mixed) / sum(flat) over each clip's windows (high levels dominate both sums, as
    they dominate the model's error); > 1 means the mixed window hurts the denoiser.
    """
    rng = np.random.default_rng(seed)
    out = []
    for name in dict.fromkeys(r["pattern"] for r in rows):
        sel = [r for r in rows if r["pattern"] == name]
        clips = sorted({r["clip"] for r in sel})
        mixed = np.array([sum(r["mixed_mse"] for r in sel if r["clip"] == c) for c in clips])
        flat = np.array([sum(r["flat_mse"] for r in sel if r["clip"] == c) for c in clips])
        idx = rng.integers(0, len(clips), (resamples, len(clips)))
        boot = mixed[idx].sum(1) / flat[idx].sum(1)
        out.append({"pattern": name, "block": sel[0]["block"], "step": sel[0]["step"], "span": sel[0]["span"],
                    "windows": len(sel), "clips": len(clips),
                    "mixed_mse": float(np.mean([r["mixed_mse"] for r in sel])),
                    "flat_mse": float(np.mean([r["flat_mse"] for r in sel])),
                    "ratio": float(mixed.sum() / flat.sum()),
                    "ratio_lo": float(np.percentile(boot, 2.5)), "ratio_hi": float(np.percentile(boot, 97.5))})
    return sorted(out, key=lambda r: (r["span"], r["block"]))
