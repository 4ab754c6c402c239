"""Held-out training loss (flow or epsilon MSE) of bundled-model weight files, on the same fresh clips for each.

    python -m miga_fast.models.tiny.heldout old.safetensors new.safetensors

256 clips rendered from a seed the training never uses, 16 batches of 16 windows of f0 frames, each at one
noise level (the training condition) with fixed levels and noise: differences between files of one
architecture are the weights' (a DiT's flow MSE and a UNet's epsilon MSE are not on one scale).
"""

from __future__ import annotations

import argparse
import random

import torch

from .bundle import TinyVideoModel
from .objective import ClipPool, noised


@torch.no_grad()
def heldout_loss(model: TinyVideoModel, batches: int = 16, batch: int = 16, seed: int = 1234) -> float:
    """Mean training MSE (the model's own objective) over `batches` fixed batches of fresh clips."""
    spec = model.spec
    pool = ClipPool(256, 2 * spec.window, spec.frame_size, random.Random(seed))
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x0, prompts = pool.batch(batch, spec.window)
        u = torch.rand(batch, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        xt, t, target = noised(spec, x0, u, eps, spec.shift)
        total += (model.net(xt, t, model.text.encode(prompts)) - target).pow(2).mean().item()
    return total / batches


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="+", help="bundled-model .safetensors files")
    args = p.parse_args(argv)
    for path in args.weights:
        model = TinyVideoModel.load(path)
        print(f"{path}: held-out {model.spec.prediction} MSE {heldout_loss(model):.4f}")


if __name__ == "__main__":
    main()
