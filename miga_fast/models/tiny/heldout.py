"""Held-out flow-matching loss of bundled-model weight files, on the same fresh clips for each.

    python -m miga_fast.models.tiny.heldout old.safetensors new.safetensors

256 clips rendered from a seed the training never uses, 16 batches of 16 windows of f0 frames, each at one
noise level (the training condition) with fixed sigmas and noise: differences between files are the weights'.
"""

from __future__ import annotations

import argparse
import random

import torch

from .bundle import TinyVideoModel
from .train import ClipPool, shifted_sigma


@torch.no_grad()
def heldout_loss(model: TinyVideoModel, batches: int = 16, batch: int = 16, seed: int = 1234) -> float:
    """Mean flow-matching MSE over `batches` fixed batches of fresh clips."""
    spec = model.spec
    pool = ClipPool(256, 2 * spec.window, spec.frame_size, random.Random(seed))
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x0, prompts = pool.batch(batch, spec.window)
        sigma = shifted_sigma(torch.rand(batch, generator=g), spec.shift)
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        t = (sigma * 1000).view(-1, 1).expand(-1, spec.window)
        pred = model.dit((1 - s) * x0 + s * eps, t, model.text.encode(prompts))
        total += (pred - (eps - x0)).pow(2).mean().item()
    return total / batches


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="+", help="bundled-model .safetensors files")
    args = p.parse_args(argv)
    for path in args.weights:
        print(f"{path}: held-out flow-matching MSE {heldout_loss(TinyVideoModel.load(path)):.4f}")


if __name__ == "__main__":
    main()
