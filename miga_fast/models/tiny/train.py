"""Train the bundled model on the procedural world (one noise level per clip).

    python -m miga_fast.models.tiny.train --minutes 50 --workdir runs/tiny               # DiT, flow matching
    python -m miga_fast.models.tiny.train --arch vc2 --minutes 50 --workdir runs/unet    # UNet, epsilon + DDPM

Deterministic for a given seed, resumable (re-run the same command: it continues from
<workdir>/checkpoint.pt, saved every 200 steps and on Ctrl-C; the clip pool is rendered anew on resume, so a
resumed run is reproducible but not equal to an uninterrupted one), shows a progress bar, logs the loss to
<workdir>/loss.csv and plots it to <workdir>/loss.png, and exports the EMA weights to
<workdir>/tiny_world.safetensors. Every --eval-minutes it also scores the EMA weights (held-out loss and the
scorer on plain clips, `evaluate.evaluate`) into <workdir>/eval.csv and <workdir>/eval.png.
Training uses the standard short-clip condition: every frame of a clip at the same noise level.
Each step also trains on single frames (joint image-video training, as Wan and VideoCrafter do): eight
unrelated frames cost less than one 8-frame clip and teach eight times as many shapes and textures.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..vc2_unet import SpatialTransformer, TemporalTransformer, VC2UNet
from ..wan import WanDiT
from .bundle import ARCHS, UNET_TARGETS, VC2_TINY_UNET, TinySpec, TinyVideoModel
from .objective import ClipPool, noised, training_noise


def deepen(dit: WanDiT, layers: int) -> None:
    """Grow `dit` to `layers` blocks in place without changing its output (function-preserving).

    Block j of the new stack copies old block ``j * old // layers``; where two neighbours copy the same block,
    the second one gets zero output projections (self-attention, cross-attention, FFN), so it starts as the
    identity: its residual branches add nothing until training moves them, while its inner weights start from
    trained ones rather than noise.
    """
    old = len(dit.blocks)
    if layers < old:
        raise ValueError(f"layers must be >= the model's {old} blocks to deepen it (got {layers})")
    sources = [j * old // layers for j in range(layers)]
    blocks = []
    for j, src in enumerate(sources):
        block = copy.deepcopy(dit.blocks[src])
        if j > 0 and sources[j - 1] == src:
            for out in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
                torch.nn.init.zeros_(out.weight)
                torch.nn.init.zeros_(out.bias)
        blocks.append(block)
    dit.blocks = torch.nn.ModuleList(blocks)
    dit.config = dataclasses.replace(dit.config, num_layers=layers)


def add_attention(src: VC2UNet, dst: VC2UNet) -> None:
    """Load `src`'s weights into `dst`, a UNet like it with attention at more resolutions (function-preserving).

    Stage by stage, `src`'s layers map in order onto `dst`'s layers of the same class; the layers only `dst`
    has (its new spatial and temporal transformers) get zero output projections, so they start as the identity
    (both add their branch to `h`) while their inner weights start random.
    """
    new = dst.config.attention_resolutions
    # GroupNorm weights are per channel whatever the grouping, so dst may also regroup
    if set(src.config.attention_resolutions) - set(new) or dataclasses.replace(
            src.config, attention_resolutions=new, norm_groups=dst.config.norm_groups) != dst.config:
        raise ValueError("add_attention: dst must be src's UNet with a superset of its attention_resolutions")
    state, new_layers = {}, []
    for name in ("input_blocks", "output_blocks"):
        for i, (old, grown) in enumerate(zip(getattr(src, name), getattr(dst, name), strict=True)):
            unmatched = list(range(len(grown)))
            for layer in old:
                k = next(k for k in unmatched if type(grown[k]) is type(layer))
                unmatched = unmatched[unmatched.index(k) + 1:]
                state.update({f"{name}.{i}.{k}.{n}": v for n, v in layer.state_dict().items()})
            for k, layer in enumerate(grown):
                if not any(key.startswith(f"{name}.{i}.{k}.") for key in state):
                    assert isinstance(layer, (SpatialTransformer, TemporalTransformer))
                    torch.nn.init.zeros_(layer.proj_out.weight)
                    torch.nn.init.zeros_(layer.proj_out.bias)
                    new_layers.append(f"{name}.{i}.{k}.")
    state.update({n: v for n, v in src.state_dict().items() if not n.startswith(("input_blocks.", "output_blocks."))})
    missing, unexpected = dst.load_state_dict(state, strict=False)
    assert not unexpected and all(n.startswith(tuple(new_layers)) for n in missing), (missing, unexpected)


def plot_eval(csv_path: Path, png_path: Path) -> None:
    """eval.csv -> eval.png: held-out loss and the plain-clip accuracies against the training step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(steps, [float(r["heldout"]) for r in rows], marker="o")
    ax1.set_xlabel("step")
    ax1.set_ylabel("held-out training MSE")
    for key, label in (("shape", "shape"), ("motion", "motion"), ("one_object", "one object")):
        ax2.plot(steps, [float(r[key]) for r in rows], marker="o", label=label)
    if "noise_colour_r" in rows[0]:  # evaluate.noise_colour_correlation: near 0 once colour follows the prompt
        ax2.plot(steps, [float(r["noise_colour_r"]) for r in rows], ls="--", marker="x", label="colour ~ noise (r)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("plain-clip accuracy (scorer)")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def plot_loss(csv_path: Path, png_path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    steps, losses = [], []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
    if not steps:
        return
    k = max(1, len(losses) // 100)
    smooth = [sum(losses[max(0, i - k) : i + 1]) / len(losses[max(0, i - k) : i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label=f"moving mean ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel("training MSE (flow or epsilon)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/tiny")
    p.add_argument("--arch", default="wan", choices=ARCHS,
                   help="wan: the DiT, flow matching (default); vc2: the 3-D UNet, epsilon on VideoCrafter2's DDPM")
    p.add_argument("--steps", type=int, default=100_000, help="stop after this many steps")
    p.add_argument("--minutes", type=float, default=50.0, help="stop after this much wall time (this session)")
    p.add_argument("--batch", type=int, default=None, help="clips of f0 frames per step (default wan 12, vc2 4)")
    p.add_argument("--image-batch", type=int, default=None,
                   help="single frames per step, joint image training (default wan 32, vc2 8)")
    p.add_argument("--sigma-shift", type=float, default=1.0,
                   help="shift of the training sigmas (1 = uniform; sampling keeps the model's own shift)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default wan 1e-3, vc2 5e-4)")
    p.add_argument("--pool", type=int, default=2048, help="clips kept rendered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-dropout", type=float, default=0.1, help="fraction of prompts replaced by ''")
    p.add_argument("--offset-noise", type=float, default=None,
                   help="std of a per-frame, per-channel constant added to the training noise (default wan 0, vc2 "
                        "0.1); see training_noise")
    p.add_argument("--norm-groups", type=int, default=None,
                   help="vc2 only, a new run: GroupNorm groups (default VideoCrafter2's 32, one channel per group at "
                        "the tiny UNet's width 32: see VC2Config.norm_groups); with --init, the file's UNet is "
                        "regrouped")
    p.add_argument("--unet-target", choices=UNET_TARGETS, default=None,
                   help="vc2 only: what the UNet outputs, eps (VideoCrafter2, the default) or v; its denoiser "
                        "returns eps either way (see TinySpec.unet_target); with --init, the file's UNet is "
                        "retargeted")
    p.add_argument("--attention-resolutions", default=None, metavar="DS,...",
                   help="vc2 only: downsampling factors with spatial + temporal attention (default the tiny UNet's "
                        "4, the 8x8 level; e.g. 2,4 adds the 16x16 one); with --init, the file's UNet is grown "
                        "(see add_attention)")
    p.add_argument("--eval-minutes", type=float, default=20.0,
                   help="score the EMA weights this often (about 90 s on one thread; 0 = never)")
    p.add_argument("--autocast", choices=("off", "bf16"), default="off",
                   help="bf16: the forward and backward under CPU bf16 autocast (weights, Adam and EMA stay fp32); "
                        "about 1.8x faster here (AVX512-BF16); off: plain fp32")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these bundled-model weights (e.g. the shipped file) with a fresh optimizer; "
                        "the step count continues from the file's 'steps' metadata; a file with fewer blocks "
                        "than the spec is deepened first (see deepen)")
    args = p.parse_args(argv)
    wan = args.arch == "wan"
    args.batch = (12 if wan else 4) if args.batch is None else args.batch
    args.image_batch = (32 if wan else 8) if args.image_batch is None else args.image_batch
    args.lr = (1e-3 if wan else 5e-4) if args.lr is None else args.lr
    args.offset_noise = (0.0 if wan else 0.1) if args.offset_noise is None else args.offset_noise

    torch.manual_seed(args.seed)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False) if ckpt.exists() else None
    if args.norm_groups is not None and wan:
        raise SystemExit("--norm-groups is for --arch vc2 (the DiT has no GroupNorm)")
    if args.unet_target is not None and wan:
        raise SystemExit("--unet-target is for --arch vc2 (the DiT predicts flow)")
    if args.attention_resolutions is not None:
        if wan:
            raise SystemExit("--attention-resolutions is for --arch vc2 (the DiT attends everywhere)")
        try:
            args.attention_resolutions = tuple(sorted({int(v) for v in args.attention_resolutions.split(",")}))
        except ValueError:
            raise SystemExit(f"--attention-resolutions takes comma-separated downsampling factors such as 2,4 "
                             f"(got {args.attention_resolutions!r})") from None
        factors = (1, 2, 4)  # the tiny UNet's levels: 32x32, 16x16, 8x8
        if not set(args.attention_resolutions) <= set(factors):
            raise SystemExit(f"--attention-resolutions must be among {factors} (got {args.attention_resolutions})")
    if state is not None and state.get("spec"):
        spec = TinySpec.from_json(state["spec"])  # a resumed run keeps its architecture
    elif args.init is not None and not wan:
        spec = TinyVideoModel.load(args.init).spec  # continue the file's UNet, regrouped if asked
        if args.norm_groups is not None:
            # GroupNorm weights are per channel whatever the grouping, so the file's weights load as they are
            spec = dataclasses.replace(spec, unet={**spec.unet, "norm_groups": args.norm_groups})
        if args.unet_target is not None:
            spec = dataclasses.replace(spec, unet_target=args.unet_target)
        if args.attention_resolutions is not None:
            spec = dataclasses.replace(spec, unet={**spec.unet, "attention_resolutions": args.attention_resolutions})
    elif wan:
        spec = TinySpec()
    else:
        spec = TinySpec.vc2(unet={**VC2_TINY_UNET, **({} if args.norm_groups is None else
                                                      {"norm_groups": args.norm_groups}),
                                  **({} if args.attention_resolutions is None else
                                     {"attention_resolutions": args.attention_resolutions})},
                            unet_target=args.unet_target or "eps")
    if args.unet_target is not None and spec.unet_target != args.unet_target:
        raise SystemExit(f"--unet-target {args.unet_target}: this run continues a UNet with unet_target "
                         f"{spec.unet_target}")
    if args.norm_groups is not None and spec.unet.get("norm_groups", 32) != args.norm_groups:
        raise SystemExit(f"--norm-groups {args.norm_groups}: this run continues a UNet with norm_groups "
                         f"{spec.unet.get('norm_groups', 32)}")
    if args.attention_resolutions is not None and tuple(spec.unet["attention_resolutions"]) != \
            args.attention_resolutions:
        raise SystemExit(f"--attention-resolutions {args.attention_resolutions}: this run continues a UNet with "
                         f"attention_resolutions {tuple(spec.unet['attention_resolutions'])}")
    model = TinyVideoModel(spec)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    step = init_step = 0
    if args.init is not None and state is None:
        start_model = TinyVideoModel.load(args.init)
        if start_model.spec.arch != args.arch:
            raise SystemExit(f"--init {args.init} is an arch {start_model.spec.arch!r} model; this run is --arch "
                             f"{args.arch}")
        if wan and len(start_model.dit.blocks) < len(model.dit.blocks):
            deepen(start_model.dit, len(model.dit.blocks))
            print(f"deepened {args.init} to {len(model.dit.blocks)} blocks (new ones start as the identity)")
        if not wan and start_model.unet.config.attention_resolutions != model.unet.config.attention_resolutions:
            add_attention(start_model.unet, model.unet)
            model.text.load_state_dict(start_model.text.state_dict())
            print(f"grew {args.init}'s UNet to attention at {model.unet.config.attention_resolutions} (new layers "
                  "start as the identity)")
        else:
            model.load_state_dict(start_model.state_dict())
        ema.load_state_dict(model.state_dict())
        step = init_step = int(start_model.metadata.get("steps", 0))
        print(f"initialised from {args.init} (step {step})")
    if state is not None:
        if state.get("arch", "wan") != args.arch:
            raise SystemExit(f"{ckpt} is a run of --arch {state.get('arch', 'wan')}; resume it with that --arch "
                             "or use another --workdir")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        init_step = state.get("init_step", 0)
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {ckpt} at step {step}")
    pool = ClipPool(args.pool, 2 * spec.window, spec.frame_size, rng)
    log_path = work / "loss.csv"
    new_log = not log_path.exists() or step == init_step
    log = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "seconds"])

    eval_path = work / "eval.csv"
    last_eval = [time.time(), None, 0.0]  # wall time, step and duration of the last evaluation

    def log_eval():
        from .evaluate import EVAL_FIELDS, evaluate

        if last_eval[1] == step:
            return
        begin = time.time()
        scores = {"step": step, **evaluate(ema)}
        last_eval[:] = [time.time(), step, time.time() - begin]
        fresh = not eval_path.exists()
        fields = EVAL_FIELDS
        if not fresh:  # a file from an older version keeps its own columns
            with open(eval_path) as f:
                fields = next(csv.reader(f))
        with open(eval_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if fresh:
                w.writeheader()
            w.writerow({k: v if k == "step" else f"{v:.4f}" for k, v in scores.items()})
        plot_eval(eval_path, work / "eval.png")
        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "step"))

    def save():
        torch.save({"arch": args.arch, "spec": spec.to_json(), "model": model.state_dict(), "ema": ema.state_dict(),
                    "opt": opt.state_dict(), "step": step, "init_step": init_step, "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state()}, ckpt)
        meta = {"steps": step, "seed": args.seed, "batch": args.batch, "image_batch": args.image_batch,
                "lr": args.lr}
        ema.save(work / "tiny_world.safetensors", extra=meta)
        log.flush()
        plot_loss(log_path, work / "loss.png")

    start = time.time()
    if args.eval_minutes and not eval_path.exists():
        log_eval()  # where this run starts from: step 0, or the --init file
    bar = tqdm(total=args.steps, initial=step, desc="training", unit="step")
    model.train()
    try:
        # the final evaluation (as long as the last one) fits inside --minutes too
        while step < args.steps and time.time() - start + last_eval[2] < args.minutes * 60:
            loss = torch.zeros(())
            for n, frames in ((args.batch, spec.window), (args.image_batch, 1)):
                if n == 0:
                    continue
                x0, prompts = pool.batch(n, frames)
                prompts = ["" if rng.random() < args.cfg_dropout else q for q in prompts]
                u = torch.rand(n)
                eps = training_noise(x0, args.offset_noise)
                xt, t, target = noised(spec, x0, u, eps, args.sigma_shift)  # one level per clip (training condition)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
                    pred = model.net(xt, t, model.text.encode(prompts)).float()
                # weighted by frames, so a step's loss is the MSE over every frame it saw
                loss = loss + (pred - target).pow(2).mean() * (n * frames)
            loss = loss / (args.batch * spec.window + args.image_batch)
            cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - init_step) / max(1, args.steps - init_step))))
            # warm-up restarts with a fresh optimizer (--init): Adam's moments start at zero again
            lr = args.lr * min(1.0, (step + 1 - init_step) / 200) * (0.1 + 0.9 * cosine)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                decay = min(0.999, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - decay)
            step += 1
            writer.writerow([step, f"{loss.item():.5f}", f"{time.time() - start:.1f}"])
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % 4 == 0:
                pool.refresh(2)
            if step % 200 == 0:
                save()
            if args.eval_minutes and time.time() - last_eval[0] > args.eval_minutes * 60:
                log_eval()
        if args.eval_minutes:
            log_eval()  # where this run stops
    except KeyboardInterrupt:
        print("interrupted: saving")
    finally:
        save()
        bar.close()
        log.close()
    print(f"step {step}: weights in {work / 'tiny_world.safetensors'}, loss plot in {work / 'loss.png'}")


if __name__ == "__main__":
    main()
