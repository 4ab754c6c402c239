"""`miga-fast` command line: render (the main job), sheet, trace (print a schedule), plan (summarise one),
eval (quality study)."""

from __future__ import annotations

import argparse
import collections
import sys

from .errors import ConfigError
from .plan import PRESETS, ModelCall, preset, trace_lines
from .plan.config import PlanConfig
from .plan.events import Emit
from .plan.trace import drive, make_plan, ring_capacity
from .runtime.graph import GraphUnavailable


def _config(args) -> PlanConfig:
    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set must be KEY=VALUE (got {item!r})")
        overrides[key.replace("-", "_")] = _parse_value(value)
    if args.reflection is not None:
        overrides["reflection"] = args.reflection
    return preset(args.preset, **overrides)


def _parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="vc2-miga-stream", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--latents", "-n", type=int, default=120, help="output latents N")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a PlanConfig field")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reflection", dest="reflection", action="store_true", default=None)
    g.add_argument("--no-reflection", dest="reflection", action="store_false")


def cmd_trace(args) -> int:
    out = sys.stdout
    for line in trace_lines(_config(args), args.latents):
        out.write(line + "\n")
    return 0


def cmd_plan(args) -> int:
    cfg = _config(args)
    phases, calls, frames, emitted = collections.Counter(), 0, 0, 0
    for ev in drive(make_plan(cfg, args.latents)):
        if isinstance(ev, ModelCall):
            calls += 1
            phases[ev.phase] += 1
            frames += len(ev.serials)
        elif isinstance(ev, Emit) and ev.keep:
            emitted += 1
    zigzag = "" if cfg.mode == "fifo" else f" L_zig={cfg.zigzag} m={cfg.guidance_frames} stride={cfg.stride}"
    print(f"preset {args.preset}: mode={cfg.mode} T={cfg.num_steps} f0={cfg.window}{zigzag}")
    print(f"  output latents     {emitted}")
    print(f"  ring capacity      {ring_capacity(cfg, args.latents)} latents")
    print(f"  model calls        {calls} ({calls / max(emitted, 1):.2f} per output latent)")
    print(f"  latent-frames fed  {frames} ({frames / max(emitted, 1):.1f} per output latent)")
    for phase, n in sorted(phases.items()):
        print(f"    {phase:<8} {n} calls")
    return 0


def cmd_render(args) -> int:
    import torch

    from .pipeline import load, load_default
    from .video import check_output_path

    if not args.prompt and not args.prompt_schedule:
        raise ConfigError("a prompt is required (or --prompt-schedule), e.g. "
                          "'a red circle moving left on a striped blue background'")
    check_output_path(args.output)  # fail before loading or rendering
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    gen = load(args.model, args.device, dtype) if args.model else load_default(args.device, dtype)
    result = gen.render(args.output, args.prompt or "", args.frames, mode=args.mode, seed=args.seed, steps=args.steps,
                        guidance_scale=args.guidance, prompt_schedule=args.prompt_schedule,
                        reflection=args.reflection, fps=args.fps, scale=args.scale, engine_mode=args.engine)
    state = "interrupted after" if result.interrupted else "wrote"
    print(f"{state} {result.frames} frames to {result.path} in {result.seconds:.1f} s "
          f"({result.fps:.2f} frames/s, mode {args.mode})")
    return 130 if result.interrupted else 0


def cmd_sheet(args) -> int:
    from PIL import Image

    from .video import contact_sheet, read_frames

    frames = read_frames(args.video)
    Image.fromarray(contact_sheet(frames, args.every, args.columns)).save(args.output)
    print(f"{args.output}: every {args.every}th of {len(frames)} frames")
    return 0


def cmd_eval(args) -> int:
    from .quality.study import run_eval

    return run_eval(args)


def cmd_export_onnx(args) -> int:
    from .export.onnx import cmd_export_onnx as export

    return export(args)


def _frames_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    if not sep or not lo.isdigit() or not hi.isdigit():
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, e.g. 2:32 (got {text!r})")
    return int(lo), int(hi)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export the denoiser (onnx)").add_subparsers(dest="format", required=True)
    p = p.add_parser("onnx", help="ONNX file of the denoiser for one window shape (miga_fast.export.onnx)")
    p.add_argument("--model", required=True, help="bundled-model .safetensors or a diffusers Wan folder")
    p.add_argument("--frames", type=int, required=True, help="latent frames F per window")
    p.add_argument("--batch", type=int, default=2, help="windows per call B (x2 for CFG: cond + uncond)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file")
    p.add_argument("--height", type=int, help="latent height (default: the bundle's frame size)")
    p.add_argument("--width", type=int, help="latent width (default: the bundle's frame size)")
    p.add_argument("--text-len", type=int, help="text tokens S (default: the bundle's; 512 for Wan)")
    p.add_argument("--dynamic-frames", type=_frames_range, metavar="MIN:MAX", help="symbolic F in [MIN, MAX]")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--check", action="store_true", help="compare onnxruntime with eager PyTorch")
    p.set_defaults(func=cmd_export_onnx)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miga-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="render a long video with the bundled model (or --model PATH)")
    p.add_argument("prompt", nargs="?", help="e.g. 'a red circle moving left on a striped blue background'")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--mode", default="miga-stream", choices=["fifo", "miga", "miga-stream"])
    p.add_argument("-o", "--output", default="out.mp4", help=".mp4 or .gif")
    p.add_argument("--prompt-schedule", help="'0:prompt a;200:prompt b' (frame:prompt pairs)")
    p.add_argument("--model", help="model bundle path (default: the bundled model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampler steps T (default: the preset's)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--engine", default="eager", choices=["eager", "compile", "graph"],
                   help="eager; compile (torch.compile of the fixed-shape step); graph (CUDA graphs, CUDA only)")
    p.add_argument("--fps", type=int, default=12)
    p.add_argument("--scale", type=int, default=4, help="integer upscaling of the saved frames")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reflection", dest="reflection", action="store_true", default=None)
    g.add_argument("--no-reflection", dest="reflection", action="store_false")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("sheet", help="contact sheet (PNG grid of every Nth frame) of a video")
    p.add_argument("video")
    p.add_argument("output")
    p.add_argument("--every", type=int, default=32)
    p.add_argument("--columns", type=int, default=8)
    p.set_defaults(func=cmd_sheet)
    p = sub.add_parser("trace", help="print the model-call trace of a schedule as JSON lines")
    _add_plan_args(p)
    p.set_defaults(func=cmd_trace)
    p = sub.add_parser("plan", help="summarise a schedule (calls, capacity, phases)")
    _add_plan_args(p)
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("eval", help="quality study: FIFO vs MIGA vs miga-stream (+ ablations with --study)")
    p.add_argument("--study", action="store_true", help="all MIGA ablations and the train-inference gap probe")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--prompts", type=int, default=2, help="how many of the study's fixed prompts")
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--out", default="bench/results/quality")
    p.add_argument("--model", help="model bundle path (default: the bundled model)")
    p.add_argument("--variants", help="comma-separated variant names (default: all with --study, else the 3 modes)")
    p.add_argument("--workers", type=int, default=2, help="render processes (one torch thread each)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--gap-clips", type=int, default=16, help="held-out clips for the gap probe (--study)")
    p.add_argument("--speed", action="store_true", help="only measure frames/s per variant and project the time")
    p.add_argument("--budget-minutes", type=float, help="start no render after this; report complete groups only")
    p.set_defaults(func=cmd_eval)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, GraphUnavailable) as exc:
        parser.exit(2, f"miga-fast: error: {exc}\n")
    except BrokenPipeError:  # `miga-fast trace | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
