"""Where a bundled UNet loses the prompt's shape: the sampler's settings, and denoising from a noised true clip.

    OMP_NUM_THREADS=2 python bench/shape_probe.py --weights W [--seeds 2] [--out DIR]

sampler: plain clips of the 12 evaluation prompts (`models.tiny.evaluate.PROMPTS`, every shape, motion and
pattern), every frame at one level, under DDIM eta x steps x CFG scale; the scorer's pooled shape accuracy and
one-object rate. The presets sample with eta 1, 16 steps, CFG 4 (the first row).
from level: 9 world clips (3 scenes x circle / square / triangle) noised to DDIM level k of 16 (DDPM step
t_k) and denoised from there to 0 with the presets' sampler (or each --from-sampler ETA,CFG); shape accuracy
per shape. A model that keeps
squares from low k but not from high k decides corners early, under heavy noise; one that rounds them off even
from a low k cannot draw them at all.
prompt swap: how much the one-step x0 estimate (no CFG) of those noised clips moves when one word of the prompt
changes (the shape word, or the object's colour word), relative to how much the true clip changes with it:
mean |x0(p') - x0(p)| / mean |truth(p') - truth(p)|. Near 0 at low k (the input already shows the answer); at
high k a model that reads a word from the prompt moves by a good fraction of the truth. A shape ratio far below
the colour ratio at high k says the prompt's shape word barely reaches the output.
Writes shape_probe_<name>.{md,csv} into --out.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import random
import shlex
import sys
import time
from pathlib import Path

import torch

from miga_fast.models.load import tiny_bundle
from miga_fast.models.tiny.bundle import TinyVideoModel
from miga_fast.models.tiny.evaluate import PROMPTS, pooled
from miga_fast.models.tiny.world import COLOURS, SHAPES, parse_prompt, render
from miga_fast.quality.scorer import score_clip
from miga_fast.solvers.ddim import DDIMSolver
from miga_fast.video import to_uint8

SAMPLERS = [(1.0, 16, 4.0), (0.0, 16, 4.0), (1.0, 50, 4.0), (0.0, 50, 4.0), (1.0, 16, 1.0), (1.0, 16, 8.0),
            (1.0, 16, 16.0)]  # (eta, steps, CFG scale); the first is the presets'
SCENES = [("red", "gray", "plain", "moving left"), ("white", "blue", "striped", "drifting"),
          ("yellow", "purple", "checkered", "moving up")]  # (colour, background, pattern, motion)
LEVELS = (15, 12, 9, 6, 3)


@torch.no_grad()
def denoise(bundle, solver: DDIMSolver, x: torch.Tensor, level: int, prompts: list[str], guidance: float,
            g: torch.Generator) -> torch.Tensor:
    """Frames ``x [B * F, 3, H, W]`` (clip-major) at `level` -> clips ``[B, 3, F, H, W]`` at level 0, in [-1, 1]."""
    b = len(prompts)
    n, c, h, w = x.shape
    f = n // b
    cond = torch.cat([bundle.text.encode(p) for p in prompts] + [bundle.text.encode("")] * b)
    state = solver.init_state(n, (c, h, w), "cpu", torch.float32)
    for k in reversed(range(level + 1)):
        levels = torch.full((n,), k)
        t = solver.model_timesteps(levels).view(b, f)
        clips = x.view(b, f, c, h, w).transpose(1, 2)
        pred_cond, pred_uncond = bundle.denoise(torch.cat([clips, clips]), torch.cat([t, t]), cond).chunk(2)
        pred = pred_uncond + guidance * (pred_cond - pred_uncond)
        noise = torch.randn(x.shape, generator=g) if solver.stochastic else None
        x = solver.step(x, pred.transpose(1, 2).reshape(n, c, h, w), levels, slots=torch.arange(n), state=state,
                        noise=noise)
    return x.view(b, f, c, h, w).transpose(1, 2).clamp(-1, 1)


@torch.no_grad()
def swap_ratio(bundle, solver: DDIMSolver, truth: torch.Tensor, swapped: torch.Tensor, prompts: list[str],
               swapped_prompts: list[str], level: int, g: torch.Generator) -> float:
    """One-step x0 change over truth change when `prompts` become `swapped_prompts` (see the module doc).

    truth, swapped: the clips of both prompts ``[B, F, 3, H, W]`` in [-1, 1]; x is `truth` noised to `level`.
    """
    b, f = truth.shape[:2]
    a = solver.alphas[level]
    t = solver.model_timesteps(torch.full((b * f,), level)).view(b, f)
    x = (a.sqrt() * truth + (1 - a).sqrt() * torch.randn(truth.shape, generator=g)).transpose(1, 2)
    cond = torch.cat([bundle.text.encode(p) for p in prompts + swapped_prompts])
    eps = bundle.denoise(torch.cat([x, x]), torch.cat([t, t]), cond)
    x0 = (torch.cat([x, x]) - (1 - a).sqrt() * eps) / a.sqrt()
    moved = (x0[b:] - x0[:b]).abs().mean()
    return float(moved / (swapped - truth).abs().mean())


def scores(clips: torch.Tensor, prompts: list[str]):
    return [score_clip(to_uint8(clip.transpose(0, 1)), p) for clip, p in zip(clips, prompts, strict=True)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="a bundled UNet (arch vc2) .safetensors file")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--sampler", action="append", metavar="ETA,STEPS,CFG",
                   help="a sampler setting to try (repeatable; default: the presets' 1,16,4 and six others)")
    p.add_argument("--from-sampler", action="append", metavar="ETA,CFG",
                   help="DDIM eta and CFG scale for the from-level probe (repeatable; default the presets' 1,4)")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)), help="DDIM levels (of 16) to start from")
    p.add_argument("--name", default=None, help="output files shape_probe_<name>.* (default: the weights' stem)")
    p.add_argument("--out", type=Path, default=Path("bench/results/quality/unet_training"))
    args = p.parse_args(argv)
    try:
        samplers = [(float(e), int(n), float(c)) for e, n, c in (v.split(",") for v in args.sampler)] \
            if args.sampler else SAMPLERS
        levels = [int(k) for k in args.levels.split(",")]
        from_samplers = [(float(e), float(c)) for e, c in (v.split(",") for v in args.from_sampler)] \
            if args.from_sampler else [(1.0, 4.0)]
    except ValueError:
        p.error("--sampler takes ETA,STEPS,CFG (e.g. 1,16,4), --from-sampler ETA,CFG (e.g. 0,1) and --levels "
                "comma-separated integers")
    if not all(0 <= k < 16 for k in levels):
        p.error(f"--levels must be in [0, 15] (got {args.levels})")
    model = TinyVideoModel.load(args.weights)
    if model.spec.arch != "vc2":
        raise SystemExit(f"--weights {args.weights}: arch {model.spec.arch!r}; this probe is for the DDIM UNet")
    bundle, f, size = tiny_bundle(model), model.spec.window, model.spec.frame_size
    rows, lines = [], [f"# Shape probe: {args.weights}", "",
                       f"`python bench/shape_probe.py {shlex.join(sys.argv[1:] if argv is None else argv)}`", ""]
    start = time.perf_counter()

    lines += ["## Sampler settings (plain clips, 12 prompts x seeds)", "", "| eta | steps | CFG | shape | one object |",
              "|---|---|---|---|---|"]
    for eta, steps, guidance in samplers:
        solver, read = DDIMSolver(steps, eta=eta), []
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(len(PROMPTS) * f, 3, size, size, generator=g)
            read += scores(denoise(bundle, solver, x, steps - 1, PROMPTS, guidance, g), PROMPTS)
        pool = pooled(read)
        rows.append({"probe": "sampler", "eta": eta, "steps": steps, "guidance": guidance, "level": steps - 1,
                     "shape_of": "all", "shape": pool["shape"], "one_object": pool["one object"]})
        lines.append(f"| {eta:g} | {steps} | {guidance:g} | {pool['shape']:.3f} | {pool['one object']:.3f} |")
        print(lines[-1], flush=True)

    prompts = [f"a {c} {s} {m} on a {pat} {bg} background" for c, bg, pat, m in SCENES for s in SHAPES]
    rng = random.Random(0)
    starts = [(rng.uniform(0, 1000), (rng.random(), rng.random())) for _ in prompts]
    truth = torch.stack([render(parse_prompt(q), f, size, start=st, phase=ph)
                         for q, (st, ph) in zip(prompts, starts, strict=True)])  # [B, F, 3, H, W]
    x0 = truth.reshape(-1, 3, size, size)
    for eta, guidance in from_samplers:
        solver = DDIMSolver(16, eta=eta)
        lines += ["", f"## From a noised world clip (DDIM eta {eta:g}, 16 levels, CFG {guidance:g}; 3 scenes x seeds "
                  "per shape)", "", "| level | DDPM t | " + " | ".join(SHAPES) + " |",
                  "|---|---|" + "---|" * len(SHAPES)]
        for level in levels:
            read = {s: [] for s in SHAPES}
            for seed in range(args.seeds):
                g = torch.Generator().manual_seed(seed)
                a = solver.alphas[level]
                x = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
                for q, s in zip(prompts, scores(denoise(bundle, solver, x, level, prompts, guidance, g), prompts),
                                strict=True):
                    read[parse_prompt(q).shape].append(s)
            acc = {s: pooled(v)["shape"] for s, v in read.items()}
            rows += [{"probe": "from level", "eta": eta, "steps": 16, "guidance": guidance, "level": level,
                      "shape_of": s, "shape": a, "one_object": pooled(read[s])["one object"]} for s, a in acc.items()]
            lines.append(f"| {level} | {int(solver.timesteps[level])} | "
                         + " | ".join(f"{acc[s]:.2f}" for s in SHAPES) + " |")
            print(lines[-1], flush=True)
    swaps = {"shape": lambda sc: dataclasses.replace(sc, shape=SHAPES[(SHAPES.index(sc.shape) + 1) % len(SHAPES)]),
             "colour": lambda sc: dataclasses.replace(sc, colour=next(
                 c for c in COLOURS if c not in (sc.colour, sc.background)))}
    solver = DDIMSolver(16)
    lines += ["", "## Prompt swap (one-step x0 change / truth change, no CFG; 9 clips x seeds)", "",
              "| level | DDPM t | " + " | ".join(f"swap {k}" for k in swaps) + " |", "|---|---|" + "---|" * len(swaps)]
    for level in levels:
        ratio = {}
        for kind, swap in swaps.items():
            scenes = [swap(parse_prompt(q)) for q in prompts]
            swapped = torch.stack([render(sc, f, size, start=st, phase=ph)
                                   for sc, (st, ph) in zip(scenes, starts, strict=True)])
            ratio[kind] = sum(swap_ratio(bundle, solver, truth, swapped, prompts, [sc.prompt for sc in scenes],
                                         level, torch.Generator().manual_seed(seed))
                              for seed in range(args.seeds)) / args.seeds
            rows.append({"probe": f"swap {kind}", "eta": "", "steps": 16, "guidance": 1.0, "level": level,
                         "shape_of": "all", "swap_ratio": ratio[kind]})
        lines.append(f"| {level} | {int(solver.timesteps[level])} | " + " | ".join(f"{ratio[k]:.3f}" for k in swaps)
                     + " |")
        print(lines[-1], flush=True)
    lines += ["", f"{(time.perf_counter() - start) / 60:.1f} min, {torch.get_num_threads()} threads."]
    name = args.name or args.weights.stem
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"shape_probe_{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], "swap_ratio"], restval="")
        w.writeheader()
        w.writerows(rows)
    (args.out / f"shape_probe_{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / f'shape_probe_{name}.md'}")


if __name__ == "__main__":
    main()
