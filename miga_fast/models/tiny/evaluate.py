"""Evaluate bundled-model weights: held-out loss + the scorer on plain clips (what training logs per checkpoint).

    python -m miga_fast.models.tiny.evaluate WEIGHTS [WEIGHTS ...] [--seeds 1]

Plain clips are the model's own f0-frame window, every frame at one level (`clips.sample_plain_clips`), one per
prompt of `PROMPTS` (12 prompts covering every shape, motion and pattern) and seed, scored by
`miga_fast.quality.scorer.score_clip`. Accuracies pool every judged frame / window (`pooled`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from ...quality.scorer import ClipScore, score_clip
from ...video import to_uint8
from .bundle import TinyVideoModel
from .clips import sample_plain_clips
from .heldout import heldout_loss
from .world import MOTIONS, PATTERNS, SHAPES, Scene

# colour pairs far apart (no gray on white: the world's own dark white is 0.52, its gray 0.50)
PAIRS = [("red", "blue"), ("yellow", "purple"), ("white", "green"), ("orange", "gray"), ("blue", "yellow"),
         ("green", "white"), ("purple", "orange"), ("gray", "red"), ("white", "blue"), ("red", "green"),
         ("yellow", "gray"), ("blue", "orange")]
# i % 3, i % 5, i % 4 over 12 prompts: every shape, motion and pattern
PROMPTS = [Scene(c, SHAPES[i % 3], list(MOTIONS)[i % 5], PATTERNS[i % 4], b).prompt for i, (c, b) in enumerate(PAIRS)]
HELDOUT_BATCHES = 16  # as `python -m miga_fast.models.tiny.heldout`, so the figures compare
EVAL_FIELDS = ("step", "heldout", "shape", "shape_judged", "motion", "motion_judged", "one_object", "noise_colour_r")


def pooled(scores: Sequence[ClipScore]) -> dict[str, float]:
    """Accuracies over all judged frames / windows of `scores` (not a mean of per-video fractions)."""
    shape = np.concatenate([s.shape_ok for s in scores])
    motion = np.concatenate([s.motion_ok for s in scores])
    return {"shape": float(np.nanmean(shape)) if np.isfinite(shape).any() else float("nan"),
            "shape judged": float(np.isfinite(shape).mean()),
            "motion": float(np.nanmean(motion)) if np.isfinite(motion).any() else float("nan"),
            "motion judged": float(np.isfinite(motion).mean()),
            "one object": float(np.concatenate([s.count_ok for s in scores]).mean()),
            "wrapped": float(np.concatenate([s.wrapped for s in scores]).mean())}


def plain_clip_scores(model: TinyVideoModel, seeds: int = 1,
                      prompts: Sequence[str] | None = None) -> tuple[list[ClipScore], float]:
    """One plain clip per prompt (default `PROMPTS`) and seed in range(seeds), scored (prompt-major per seed),
    and `noise_colour_correlation` over all of them."""
    prompts = list(PROMPTS if prompts is None else prompts)
    scores, clips, noise = [], [], []
    for seed in range(seeds):
        c, n = sample_plain_clips(model, prompts, seed=seed, return_noise=True)  # [len(prompts), 3, f0, H, W]
        scores += [score_clip(to_uint8(clip.transpose(0, 1)), prompt) for prompt, clip in zip(prompts, c,
                                                                                              strict=True)]
        clips.append(c)
        noise.append(n)
    return scores, noise_colour_correlation(torch.cat(clips), torch.cat(noise))


def noise_colour_correlation(clips: torch.Tensor, noise: torch.Tensor) -> float:
    """Pearson r between each frame's mean colour (per channel) and the mean of the noise it was sampled from;
    clips, noise ``[B, 3, F, H, W]``. Near 0 when colour comes from the prompt; the 812-step UNet reads 0.80
    (its colour follows the noise: see `objective.training_noise`)."""
    x, y = noise.mean((3, 4)).flatten(), clips.mean((3, 4)).flatten()
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


@torch.no_grad()
def evaluate(model: TinyVideoModel, seeds: int = 1) -> dict[str, float]:
    """Held-out loss (`HELDOUT_BATCHES` batches), pooled plain-clip accuracies over `PROMPTS` and the
    noise-colour correlation of `model`, keyed as `EVAL_FIELDS` (less "step"). Runs under a forked torch RNG: a
    training run's random stream is the same with or without it."""
    with torch.random.fork_rng(devices=[]):
        scores, corr = plain_clip_scores(model, seeds)
        a = pooled(scores)
        loss = heldout_loss(model, batches=HELDOUT_BATCHES)
    return {"heldout": loss, "shape": a["shape"], "shape_judged": a["shape judged"], "motion": a["motion"],
            "motion_judged": a["motion judged"], "one_object": a["one object"], "noise_colour_r": corr}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="+", help="bundled-model .safetensors files")
    p.add_argument("--seeds", type=int, default=1, help="plain clips per prompt")
    args = p.parse_args(argv)
    for path in args.weights:
        model = TinyVideoModel.load(path)
        r = evaluate(model, args.seeds)
        print(f"{path} (step {model.metadata.get('steps', '?')}): " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
