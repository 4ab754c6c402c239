"""`miga-fast` command line: trace (print a schedule), plan (summarise one)."""

from __future__ import annotations

import argparse
import collections
import sys

from .errors import ConfigError
from .plan import PRESETS, ModelCall, preset, trace_lines
from .plan.config import PlanConfig
from .plan.events import Emit
from .plan.trace import drive, make_plan, ring_capacity


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miga-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("trace", help="print the model-call trace of a schedule as JSON lines")
    _add_plan_args(p)
    p.set_defaults(func=cmd_trace)
    p = sub.add_parser("plan", help="summarise a schedule (calls, capacity, phases)")
    _add_plan_args(p)
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        parser.exit(2, f"miga-fast: error: {exc}\n")
    except BrokenPipeError:  # `miga-fast trace | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
