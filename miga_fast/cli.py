"""`miga-fast` command line: render (the main job), batch (a job file), serve (HTTP), sheet, trace (print a
schedule), plan (summarise one), eval (quality study), bench (benchmarks of bench/)."""

from __future__ import annotations

import argparse
import collections
import math
import sys

from .errors import ConfigError, EngineError, RenderError
from .plan import PRESETS, ModelCall, preset, trace_lines
from .plan.config import PlanConfig
from .plan.events import Emit
from .plan.trace import drive, make_plan, ring_capacity
from .runtime.modes import GraphUnavailable


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


def _render_size(text: str) -> tuple[int, int]:
    """render --size "HxW" -> (H, W); a malformed value is a one-line ConfigError naming --size and the form."""
    h, sep, w = text.strip().lower().partition("x")
    h, w = h.strip(), w.strip()
    if not (sep and h.isascii() and h.isdigit() and w.isascii() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise ConfigError(f"--size must be HxW, the frame height and width in pixels as positive integers that are "
                          f"multiples of the model's size multiple, e.g. 480x832 (got {text!r})")
    return int(h), int(w)


def cmd_render(args) -> int:
    import torch

    from .pipeline import load, load_default
    from .video import check_output_path

    if not args.prompt and not args.prompt_schedule:
        raise ConfigError("a prompt is required (or --prompt-schedule), e.g. "
                          "'a red circle moving left on a striped blue background'")
    size = None if args.size is None else _render_size(args.size)  # fail before loading or rendering
    if args.tokenizer is not None and not args.model:
        raise ConfigError("--tokenizer applies to VideoCrafter2 checkpoints given with --model, "
                          "not to the bundled model")
    check_output_path(args.output)  # fail before loading or rendering
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model:
        gen = load(args.model, args.device, dtype, tokenizer=args.tokenizer)
    else:
        gen = load_default(args.device, dtype)
    if size is not None and any(side % gen.bundle.size_multiple for side in size):
        default = "x".join(map(str, gen.bundle.size))
        raise ConfigError(f"--size must be HxW with H and W multiples of {gen.bundle.size_multiple} for this model "
                          f"({gen.family}, default {default}) (got {args.size!r})")
    # guidance / negative prompt / size / fps / scale left at None: the model's own values (VideoGenerator)
    result = gen.render(args.output, args.prompt or None, args.frames, mode=args.mode, seed=args.seed,
                        steps=args.steps, guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
                        size=size, prompt_schedule=args.prompt_schedule, reflection=args.reflection, fps=args.fps,
                        scale=args.scale, engine_mode=args.engine, resume=args.resume,
                        checkpoint_every=args.checkpoint_every)
    if result.already_done:
        print(f"{result.path} is already complete ({result.frames} frames): nothing to resume")
        return 0
    state = "interrupted after" if result.interrupted else "wrote"
    since = f" (resumed at frame {result.resumed_from})" if result.resumed_from else ""
    print(f"{state} {result.frames} frames to {result.path}{since} in {result.seconds:.1f} s "
          f"({result.fps:.2f} frames/s, mode {args.mode})")
    if result.interrupted:
        print(f"resume with the same command and --resume (checkpoint: {result.path}.ckpt/)")
    return 130 if result.interrupted else 0


def cmd_batch(args) -> int:
    from .batch import BatchInterrupted, run
    from .jobs import JobFileError

    try:
        rows = run(args.jobs, args.output, model=args.model, device=args.device, workers=args.workers,
                   pack=args.pack, ray=args.ray, fail_fast=args.fail_fast, skip_invalid=args.skip_invalid,
                   checkpoint_every=args.checkpoint_every, threads=args.threads)
    except JobFileError as exc:  # every bad line, compiler-style, then nothing rendered
        print("\n".join(exc.lines()), file=sys.stderr)
        print(f"miga-fast: error: {len(exc.problems)} bad job(s); nothing was rendered (--skip-invalid renders the "
              "rest)", file=sys.stderr)
        return 2
    except BatchInterrupted as exc:
        print(f"miga-fast: batch interrupted: {exc}", file=sys.stderr)
        return 130
    counts = collections.Counter(r["status"] for r in rows)
    print(f"{counts['done']} done, {counts['failed']} failed of {len(rows)} job(s); "
          f"manifest: {args.output}/manifest.jsonl")
    for r in rows:
        if r["status"] == "failed":
            print(f"  {args.jobs}:{r['line']}: {r['id']}: {r['error']}", file=sys.stderr)
    return 1 if counts["failed"] else 0


def cmd_serve(args) -> int:
    from .service import serve

    serve(args.model, host=args.host, port=args.port, device=args.device, max_queue=args.max_queue,
          token_file=args.token_file, state_dir=args.state_dir, max_frames=args.max_frames, max_steps=args.max_steps)
    return 0


def cmd_sheet(args) -> int:
    from PIL import Image

    from .video import contact_sheet, read_frames

    frames = read_frames(args.video)
    Image.fromarray(contact_sheet(frames, args.every, args.columns)).save(args.output)
    print(f"{args.output}: {math.ceil(len(frames) / args.every)} frames, one in {args.every} of {len(frames)}")
    return 0


def cmd_eval(args) -> int:
    from .quality.study import run_eval

    return run_eval(args)


def cmd_export_onnx(args) -> int:
    from .export.onnx import cmd_export_onnx as export

    return export(args)


BENCH_SCRIPTS = {"fps": "fps_memory", "overhead": "overhead", "soak": "soak"}


def cmd_bench(args) -> int:
    """Run bench/<script>.py of the source checkout (frames/s vs memory by default) with the remaining arguments."""
    import importlib
    from pathlib import Path

    rest = list(args.rest)
    which = rest.pop(0) if rest and rest[0] in BENCH_SCRIPTS else "fps"
    path = Path(__file__).resolve().parents[1] / "bench" / f"{BENCH_SCRIPTS[which]}.py"
    if not path.is_file():
        raise ConfigError(f"miga-fast bench needs the benchmarks of a source checkout ({path} not found): "
                          "clone the repository and pip install -e '.[bench]'")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # the scripts import their neighbours (common, baseline_loop)
    return importlib.import_module(path.stem).main(rest)


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
    p.add_argument("--dynamic-batch", type=_frames_range, metavar="MIN:MAX",
                   help="symbolic B in [MIN, MAX] (one ONNX for TensorRT profiles of several step kinds)")
    p.add_argument("--opset", type=int, default=23, help="ONNX opset (default 23: attention as one fused Attention "
                   "node, for TensorRT >= 10.15; 20: MatMul-Softmax-MatMul)")
    p.add_argument("--check", action="store_true", help="compare onnxruntime with eager PyTorch")
    p.set_defaults(func=cmd_export_onnx)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="miga-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="render a long video with the bundled model (or --model PATH: a VideoCrafter2 "
                       "checkpoint or a diffusers Wan2.1 folder)",
                       description="Render a long video. --guidance, --negative-prompt, --size, --fps and --scale "
                       "default to the model's own values (those of its official sampler).")
    p.add_argument("prompt", nargs="?", help="e.g. 'a red circle moving left on a striped blue background'")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--mode", default="miga-stream", choices=["fifo", "miga", "miga-stream"])
    p.add_argument("-o", "--output", default="out.mp4", help=".mp4 or .gif")
    p.add_argument("--prompt-schedule", help="'0:prompt a;200:prompt b' (frame:prompt pairs)")
    p.add_argument("--model", metavar="PATH", help="a bundled-model .safetensors file, a VideoCrafter2 checkpoint "
                   "(model.ckpt) or a diffusers Wan2.1 T2V folder (default: the bundled model)")
    p.add_argument("--tokenizer", metavar="PATH", help="VideoCrafter2 checkpoints only: folder with the CLIP "
                   "tokenizer files vocab.json + merges.txt (default: tokenizer/ next to the checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampler steps T (default: the preset's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale, 1 = off (default: the model's: "
                   "bundled 4, Wan2.1 5, VideoCrafter2 12)")
    p.add_argument("--negative-prompt", metavar="TEXT", help="the prompt of the unconditional CFG branch (default: "
                   "the model's: Wan2.1's official negative prompt, else empty)")
    p.add_argument("--size", metavar="HxW", help="frame height x width in pixels, e.g. 480x832; both multiples of "
                   "the model's size multiple (default: the model's: bundled 32x32, Wan2.1 480x832, "
                   "VideoCrafter2 320x512)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--engine", default="auto", choices=["auto", "eager", "compile", "graph"],
                   help="auto (default: CUDA graphs on a GPU; on a CPU compile when the video is long enough to "
                   "repay the compile, measured break-even 151 frames with a warm cache, 783 cold, else eager); "
                   "eager; compile (torch.compile of the fixed-shape step, code cached on disk); graph (CUDA only)")
    p.add_argument("--resume", action="store_true", help="go on from the checkpoint of an interrupted render of -o "
                   "(OUTPUT.ckpt/); the video equals an uninterrupted one. A finished render: says so, exits 0")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="frames between checkpoints of the queue state "
                   "(mp4 only; default 64; 0: none, the file is written directly); also on SIGINT / SIGTERM")
    p.add_argument("--fps", type=int, help="frame rate of the saved video (default: the model's: bundled 12, "
                   "Wan2.1 16, VideoCrafter2 8)")
    p.add_argument("--scale", type=int, help="integer upscaling of the saved frames (default: the model's: "
                   "bundled 4, else 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reflection", dest="reflection", action="store_true", default=None)
    g.add_argument("--no-reflection", dest="reflection", action="store_false")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("batch", help="render every job of a JSONL / CSV job file into a folder, resumably",
                       description="Render one video per job line (keys: prompt or prompt_schedule, frames, mode, "
                       "seed, steps, guidance, size, negative_prompt, id) into OUTDIR/<id>.mp4, with "
                       "OUTDIR/manifest.jsonl. Every line is checked before anything renders. Run the same "
                       "command again after any interruption: finished jobs are skipped, unfinished ones resume.")
    p.add_argument("jobs", help="a .jsonl (one JSON object per line) or .csv (header row) job file")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--model", metavar="PATH", help="as for render (default: the bundled model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="worker processes (or Ray actors with --ray)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the workers on Ray: 'local' starts one on this machine, "
                   "else a cluster address (needs the [ray] extra)")
    p.add_argument("--pack", type=int, default=1, metavar="V", help="videos per engine run (launch-bound devices; "
                   "jobs with self-reflection or a prompt schedule render alone)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: the cores shared out)")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="frames between checkpoints (default 64)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed job (default: record it, "
                   "go on)")
    p.add_argument("--skip-invalid", action="store_true", help="render the valid jobs of a file with bad lines")
    p.set_defaults(func=cmd_batch)
    p = sub.add_parser("serve", help="HTTP service: OpenAI-style video jobs, live frame streams, a web page at /",
                       description="Serve one model over HTTP (see miga_fast/service/app.py for the endpoints). "
                       "Binds to loopback unless --host says otherwise.")
    p.add_argument("--model", default="default", metavar="PATH|default", help="as for render (default: bundled)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-queue", type=int, default=16, metavar="N", help="jobs waiting before 429 (default 16)")
    p.add_argument("--max-frames", type=int, default=4096, metavar="N", help="frames per job at most")
    p.add_argument("--max-steps", type=int, default=100, metavar="N", help="sampler steps per job at most")
    p.add_argument("--token-file", metavar="F", help="a file holding the bearer token every request must carry")
    p.add_argument("--state-dir", default="miga-state", metavar="DIR", help="jobs (SQLite), videos and their "
                   "checkpoints; a restarted server finishes the jobs found here")
    p.set_defaults(func=cmd_serve)
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
    p.add_argument("--variants",
                   help="comma-separated variant names (default: all but reflection with --study, else fifo with and "
                        "without lookahead, miga and miga-stream)")
    p.add_argument("--workers", type=int, default=1, help="render processes (sharing the CPU's threads)")
    p.add_argument("--pack", type=int, default=4,
                   help="videos per engine run, packed along channels (reflection runs unpacked: its decisions "
                        "would be shared)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the model's weights (latents stay fp32); bfloat16 is about 1.8x faster on an AVX512-BF16 CPU")
    p.add_argument("--gap-clips", type=int, default=16, help="held-out clips for the gap probe (--study)")
    p.add_argument("--speed", action="store_true", help="only measure frames/s per variant and project the time")
    p.add_argument("--budget-minutes", type=float, help="start no render after this; report complete groups only")
    p.add_argument("--interval", choices=("bootstrap", "t"), default="bootstrap",
                   help="95%% intervals of the tables: percentile bootstrap over videos / (prompt, seed) pairs, or "
                        "Student t (for a handful of videos)")
    p.set_defaults(func=cmd_eval)
    _add_export(sub)
    # prefix_chars="+": every argument after "bench" goes to the benchmark script's own parser (also -h)
    p = sub.add_parser("bench", prefix_chars="+", add_help=False,
                       help="benchmarks: [fps|overhead|soak] [options] (fps: frames/s vs memory; -h for options)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


# Library argument names -> the render flags a CLI user typed (an error names what the user wrote).
FLAGS = {"guidance_scale": "--guidance", "steps": "--steps", "frames": "--frames", "seed": "--seed", "fps": "--fps",
         "scale": "--scale", "checkpoint_every": "--checkpoint-every", "size": "--size", "engine_mode": "--engine",
         "negative_prompt": "--negative-prompt", "device": "--device", "prompt": "the prompt", "mode": "--mode",
         "resume": "--resume"}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name, sep, rest = text.partition(" must ")
    return f"{FLAGS[name]} must {rest}" if sep and name in FLAGS else text


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (`miga-fast: error: ...`), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"miga-fast: error: {self.prog.removeprefix('miga-fast ')}: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, GraphUnavailable) as exc:  # bad input: nothing was done
        parser.exit(2, f"miga-fast: error: {_one_line(exc)}\n")
    except (EngineError, RenderError) as exc:  # the run broke (NaN, disk full): what was kept is in the message
        parser.exit(1, f"miga-fast: error: {_one_line(exc)}\n")
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint is kept
        parser.exit(130, "miga-fast: aborted (the last checkpoint is kept: run again with --resume)\n")
    except BrokenPipeError:  # `miga-fast trace | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
