"""Plain f0-frame clips of bundled-model weights, sampled the standard short-clip way, as a PNG grid.

    python -m miga_fast.models.tiny.clips WEIGHTS [WEIGHTS ...] -o clips.png [--seeds 2] [--steps 16]

Every frame of a clip sits at one noise level for the whole run (the condition the model is trained in),
stepped by the model's own presets' solver (flow UniPC with its shift for the DiT, DDIM for the UNet) and
guidance scale: the presets' sampler without the queue. Rows, per prompt: the world's ground truth, then one
row per weights file and seed; columns: the f0 frames. It is the check that the model itself draws the scene
before FIFO / MIGA stretch it out.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np
import torch
from torch import Tensor

from ...plan import PRESETS
from ...solvers import solver_for
from ...video import contact_sheet, to_uint8
from ..load import tiny_bundle
from .bundle import TinyVideoModel
from .world import parse_prompt, render

PROMPTS = (
    "a red circle moving left on a striped blue background",
    "a yellow triangle drifting on a checkered purple background",
    "a white square moving down on a dotted green background",
    "a orange circle moving up on a plain gray background",
)


@torch.no_grad()
def sample_plain_clips(model: TinyVideoModel, prompts: list[str], steps: int = 16, seed: int = 0,
                       guidance_scale: float | None = None,
                       return_noise: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """One f0-frame clip per prompt, all frames at one level: ``[len(prompts), 3, f0, H, W]`` in [-1, 1].

    guidance_scale: CFG scale (default: the model's own, as `miga-fast render` uses). return_noise: also return
    the noise sampling started from, in the same layout."""
    bundle = tiny_bundle(model)
    guidance = bundle.guidance_scale if guidance_scale is None else guidance_scale
    b, f = len(prompts), model.spec.window
    c, h, w = bundle.latent_shape()
    n = b * f  # latents are frames, clip-major, as the engine holds them
    # the presets' solver (and shift rule) at `steps` levels; no queue here, so no schedule validation
    solver = solver_for(dataclasses.replace(PRESETS[f"{bundle.family}-fifo"], num_steps=steps), bundle.shift)
    state = solver.init_state(n, (c, h, w), "cpu", torch.float32)
    slots = torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    x = start = torch.randn(n, c, h, w, generator=g)
    cond = torch.cat([bundle.text.encode(p) for p in prompts] + [bundle.text.encode(bundle.negative_prompt)] * b)
    for level in reversed(range(steps)):
        levels = torch.full((n,), level)
        t = solver.model_timesteps(levels).view(b, f)
        clips = x.view(b, f, c, h, w).transpose(1, 2)
        pred_cond, pred_uncond = bundle.denoise(torch.cat([clips, clips]), torch.cat([t, t]), cond).chunk(2)
        pred = pred_uncond + guidance * (pred_cond - pred_uncond)  # CFG as the engine combines it
        noise = torch.randn(x.shape, generator=g) if solver.stochastic else None  # DDIM's eta > 0
        x = solver.step(x, pred.transpose(1, 2).reshape(n, c, h, w), levels, slots=slots, state=state, noise=noise)
    clips = x.view(b, f, c, h, w).transpose(1, 2).clamp(-1, 1)
    return (clips, start.view(b, f, c, h, w).transpose(1, 2)) if return_noise else clips


def clip_grid(clips: Tensor, scale: int = 4) -> np.ndarray:
    """``[B, 3, F, H, W]`` in [-1, 1] -> uint8 contact sheet, a clip per row, each pixel ``scale`` x ``scale``."""
    frames = [to_uint8(clip[:, k]) for clip in clips for k in range(clip.shape[1])]
    return contact_sheet(frames, every=1, columns=clips.shape[2]).repeat(scale, 0).repeat(scale, 1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="+", help="bundled-model .safetensors files")
    p.add_argument("-o", "--output", default="clips.png")
    p.add_argument("--seeds", type=int, default=2, help="clips per prompt and weights file")
    p.add_argument("--steps", type=int, default=16, help="sampling steps (the tiny presets use 16)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's own)")
    p.add_argument("--prompt", action="append", help="prompt (repeatable; default: four covering every pattern)")
    args = p.parse_args(argv)
    prompts = args.prompt or list(PROMPTS)
    models = [TinyVideoModel.load(w) for w in args.weights]
    window, size = models[0].spec.window, models[0].spec.frame_size
    rng = random.Random(0)
    rows = []
    for prompt in prompts:
        phase = (rng.random(), rng.random())
        truth = render(parse_prompt(prompt), window, size, start=rng.uniform(0, 1000), phase=phase)
        rows.append(truth.permute(1, 0, 2, 3)[None])
        for model in models:
            rows += [sample_plain_clips(model, [prompt], args.steps, seed, args.guidance) for seed in range(args.seeds)]
    from PIL import Image

    Image.fromarray(clip_grid(torch.cat(rows))).save(args.output)
    print(f"{args.output}: {len(prompts)} prompts x (truth + {len(models)} weights x {args.seeds} seeds), "
          f"{window} frames each")


if __name__ == "__main__":
    main()
