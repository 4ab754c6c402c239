"""Score the bundled model with `miga_fast.quality.scorer`: plain clips and long miga-stream renders.

    OMP_NUM_THREADS=1 python bench/score_model.py [--frames 256] [--seeds 3] [--weights FILE --name NAME]

Plain clips: the model's own 8-frame window, every frame at one level (`models.tiny.clips.sample_plain_clips`),
`--seeds` seeds x 12 prompts covering every shape, motion and pattern. Long renders: 4 prompts through
`gen.stream(prompt, frames, mode="miga-stream", seed=0)`, scored in 8-frame windows. The world's own clips of the
same prompts are scored too, as the reference. Writes bench/results/quality/scorer_<name>.{csv,md} (name default
`current_model`: the shipped weights); `--frames 0` scores plain clips only.
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import miga_fast
from miga_fast.models.tiny.clips import sample_plain_clips
from miga_fast.models.tiny.evaluate import PROMPTS, pooled
from miga_fast.models.tiny.world import SHAPES, parse_prompt, render
from miga_fast.quality.scorer import score_clip, score_video
from miga_fast.video import to_uint8

LONG = PROMPTS[:4]
OUT = Path(__file__).parent / "results" / "quality"
FIELDS = ("kind", "prompt", "seed", "frames", "shape_accuracy", "shape_frames", "motion_accuracy", "motion_windows",
          "count_accuracy", "wrapped_fraction", "shapes_read", "seconds")


def row(kind: str, prompt: str, seed: int, score, seconds: float = 0.0) -> dict:
    read = Counter(s for s in score.shape if s)
    return {"kind": kind, "prompt": prompt, "seed": seed, "frames": len(score.count), **score.summary(),
            "shapes_read": " ".join(f"{k}:{v}" for k, v in read.most_common()), "seconds": round(seconds, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--frames", type=int, default=256, help="frames per long render")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--weights", type=Path, default=None, help="a bundled-model file (default: the shipped one)")
    p.add_argument("--name", default="current_model", help="output files scorer_<name>.csv / .md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    gen = miga_fast.load(args.weights) if args.weights else miga_fast.load_default()
    rows, groups = [], {"world clips (8 frames)": [], "plain clips (8 frames)": [],
                        f"world ({args.frames} frames)": [], f"miga-stream ({args.frames} frames)": []}
    rng = random.Random(0)
    for prompt in PROMPTS:  # the reference: the world's own clips of the same prompts
        scene = parse_prompt(prompt)
        for seed in range(args.seeds):
            truth = to_uint8(render(scene, 8, 32, start=rng.uniform(0, 1000), phase=(rng.random(), rng.random())))
            groups["world clips (8 frames)"].append(s := score_clip(truth, prompt))
            rows.append(row("world clip", prompt, seed, s))
    for seed in range(args.seeds):
        t = time.perf_counter()
        clips = sample_plain_clips(gen.model, PROMPTS, seed=seed)  # [12, 3, 8, H, W]
        seconds = (time.perf_counter() - t) / len(PROMPTS)
        for prompt, clip in zip(PROMPTS, clips, strict=True):
            groups["plain clips (8 frames)"].append(s := score_clip(to_uint8(clip.transpose(0, 1)), prompt))
            rows.append(row("plain clip", prompt, seed, s, seconds))
    print(f"plain clips done ({time.perf_counter() - start:.0f} s)", flush=True)
    for prompt in LONG if args.frames else []:
        scene = parse_prompt(prompt)
        truth = to_uint8(render(scene, args.frames, 32, phase=(rng.random(), rng.random())))
        groups[f"world ({args.frames} frames)"].append(s := score_video(truth, prompt))
        rows.append(row("world long", prompt, 0, s))
        t = time.perf_counter()
        frames = np.stack(list(gen.stream(prompt, frames=args.frames, mode="miga-stream", seed=0)))
        seconds = time.perf_counter() - t
        groups[f"miga-stream ({args.frames} frames)"].append(s := score_video(frames, prompt, window=8))
        rows.append(row("miga-stream", prompt, 0, s, seconds))
        print(f"{prompt}: {s.summary()} ({seconds:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"scorer_{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: (f"{v:.4f}" if isinstance(v, float) and k != "seconds" else v) for k, v in r.items()}
                    for r in rows)
    minutes = (time.perf_counter() - start) / 60
    weights = args.weights or "the shipped bundled model"
    spec, params = gen.model.spec, sum(p.numel() for p in gen.model.parameters())
    lines = [f"# Scorer on {weights}", "",
             f"Model: arch {spec.arch} ({spec.prediction} prediction), {params:,} parameters, "
             f"{gen.model.metadata.get('steps', '?')} training steps.", "",
             f"`OMP_NUM_THREADS=1 python bench/score_model.py --seeds {args.seeds} --frames {args.frames}"
             + (f" --weights {args.weights} --name {args.name}" if args.weights else "")
             + f"` ({minutes:.1f} min, 1 thread). Scorer: `miga_fast/quality/scorer.py`; rows: "
             f"`scorer_{args.name}.csv`.", "",
             f"Plain clips: {args.seeds} seeds x {len(PROMPTS)} prompts (every shape, motion and pattern), the "
             "model's 8-frame window with every frame at one level, one motion window each. Long: "
             f"{len(LONG)} prompts x {args.frames} frames of miga-stream, seed 0, motion in 8-frame windows. "
             "World rows: the procedural world's own clips of the same prompts (what a perfect model scores).", "",
             "Accuracies pool all judged frames / windows. Shape is judged only where the object touches no "
             "frame edge (`shape judged`: that fraction of frames); motion is not judged in windows where the object "
             "is out of sight in transit between edges; `one object`: frames with exactly one object (or none "
             "while a moving one is in transit); `wrapped`: frames with the object drawn around the frame.", "",
             "| videos | shape | shape judged | motion | motion judged | one object | wrapped |",
             "|---|---|---|---|---|---|---|"]
    for name, scores in groups.items():
        if not scores:  # --frames 0: no long renders
            continue
        a = pooled(scores)
        lines.append(f"| {name} | {a['shape']:.3f} | {a['shape judged']:.2f} | {a['motion']:.3f} | "
                     f"{a['motion judged']:.2f} | {a['one object']:.3f} | {a['wrapped']:.3f} |")
    lines += ["", "Shapes read on the model's plain clips, per prompted shape (frames):", ""]
    for shape in SHAPES:
        read = Counter(x for sc in groups["plain clips (8 frames)"] if f" {shape} " in sc.prompt for x in sc.shape
                       if x)
        lines.append(f"- {shape}: " + (", ".join(f"{k} {v}" for k, v in read.most_common()) or "none judged"))
    (args.out / f"scorer_{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
