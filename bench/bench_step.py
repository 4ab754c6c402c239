"""Engine step benchmark: compile time per step kind, steady-state step time eager vs compile, recompiles.

Each case runs one plan twice in the same process, in engine mode "eager" (the static step uncompiled)
and "compile" (`torch.compile` of the static step, one per step kind), timing every model call (host
input preparation + denoiser + solver + ring write: the whole `StaticStepper.execute`). Per step kind: the
first compile-mode call (= compile time, cold caches unless --warm-cache), then medians and 20/80th
percentiles of both modes over the calls after `--warmup` per kind. Recompiles = graphs compiled minus
step kinds, with dynamo's error_on_recompile on. Small shapes only by default; writes bench/results/step.csv.

    python bench/bench_step.py [--cases toy-fifo,wan-fifo] [--warm-cache] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

if "--warm-cache" not in sys.argv:  # before torch is imported: measure cold compiles
    os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, quantiles, write_csv  # noqa: E402

from miga_fast.models.toy import ToyDenoiser  # noqa: E402
from miga_fast.models.wan import WanConfig, WanDiT  # noqa: E402
from miga_fast.plan import preset  # noqa: E402
from miga_fast.runtime import Engine  # noqa: E402
from miga_fast.runtime.step import StepKey  # noqa: E402
from miga_fast.solvers import solver_for  # noqa: E402

SMALL_MIGA = dict(num_steps=24, window=8, zigzag=2, guidance_frames=2, stride=4, end_level=3, refine_level=3)
TINY_WAN = WanConfig(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                     text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1)


def toy():
    return ToyDenoiser(channels=4, cond_dim=8).eval(), (4, 6, 6)


def wan():
    torch.manual_seed(0)
    return WanDiT(TINY_WAN).eval().denoise, (4, 8, 8)


SMALL_WAN = dict(num_steps=20, window=9, zigzag=3, guidance_frames=2, stride=4, end_level=3, refine_level=3)
REFLECT = dict(reflection=True, judged_level=8, reflect_blocks=2, candidates=2, reflect_threshold=-1.0)
TINY_MIGA = dict(num_steps=12, window=4, zigzag=2, guidance_frames=1, stride=2, end_level=2, refine_level=2,
                 reflection=False)

# name -> (model factory, preset, overrides, output latents): every preset, small shapes
CASES = {
    "toy-fifo": (toy, "vc2-fifo", dict(num_steps=16, window=8), 100),
    "toy-fifo-nolookahead": (toy, "vc2-fifo-nolookahead", dict(num_steps=16, window=8), 60),
    "toy-miga": (toy, "vc2-miga", SMALL_MIGA, 40),
    "toy-miga-reflection": (toy, "vc2-miga", dict(SMALL_MIGA, num_steps=16, **REFLECT), 24),  # rollouts triggered
    "toy-miga-stream": (toy, "vc2-miga-stream", SMALL_MIGA, 40),
    "toy-wan-miga": (toy, "wan-miga", dict(SMALL_WAN, reflection=False), 30),
    "toy-wan-miga-reflection": (toy, "wan-miga", dict(SMALL_WAN, reflection=True, judged_level=10,
                                                      reflect_threshold=-1.0), 20),
    "toy-wan-miga-stream": (toy, "wan-miga-stream", dict(SMALL_WAN, reflection=False), 30),
    "wan-fifo": (wan, "tiny-fifo", dict(num_steps=8, window=4), 100),
    "wan-miga": (wan, "tiny-miga", TINY_MIGA, 16),
    "wan-miga-stream": (wan, "tiny-miga-stream", TINY_MIGA, 16),
}


def timed_run(model, shape, cfg, n, mode) -> tuple[dict[StepKey, list[float]], set[str], Engine, torch.Tensor]:
    """Per-kind wall times of every model call of one run, the phases seen per kind, the output latents."""
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g) * 0.1
    engine = Engine(model, solver_for(cfg), cfg, shape, cond=cond, uncond=uncond, guidance_scale=3.0, seed=3,
                    mode=mode)
    times: dict[StepKey, list[float]] = defaultdict(list)
    phases: dict[StepKey, set[str]] = defaultdict(set)
    execute = engine.stepper.execute

    def timed(calls, *args):
        start = time.perf_counter()
        out = execute(calls, *args)
        key = engine.stepper.last_key
        times[key].append(time.perf_counter() - start)
        phases[key].add(calls[0].phase)
        return out

    engine.stepper.execute = timed
    with torch.no_grad():
        out = torch.stack(list(engine.run(n)))
    return times, phases, engine, out


def steady(times: list[float], warmup: int) -> tuple[float, float, float, float]:
    """quantiles() of the calls after `warmup` (after the first call at least, for kinds with few calls);
    NaN for a kind that ran once: its only call is the compiling one, there is no steady state."""
    if len(times) < 2:
        return (float("nan"),) * 4
    rest = times[warmup:] if len(times) > warmup + 1 else times[1:]
    return quantiles(rest * 2 if len(rest) < 2 else rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    parser.add_argument("--warmup", type=int, default=3, help="calls per kind excluded from the steady state")
    parser.add_argument("--warm-cache", action="store_true", help="allow inductor's on-disk caches (warm compiles)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared CPU, OpenMP barriers with a descheduled thread swamp "
                             "millisecond steps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"# step bench on {info['cpu']} ({info['threads']} threads), torch {info['torch']}, "
          f"{'warm' if args.warm_cache else 'cold'} compile caches")
    rows = []
    for name in args.cases.split(","):
        factory, preset_name, overrides, n = CASES[name]
        model, shape = factory()
        cfg = preset(preset_name, **overrides)
        eager, _, _, ref = timed_run(model, shape, cfg, n, "eager")
        before = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled, phases, engine, out = timed_run(model, shape, cfg, n, "compile")
        recompiles = counters["stats"]["unique_graphs"] - before - len(compiled)
        # relative to the largest value: the same criterion as tests/runtime/test_compile.py (<= 1e-4)
        rel_err = ((out - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()
        compile_s = engine.runner.compile_seconds
        for key in sorted(compiled, key=str):
            e, c = steady(eager[key], args.warmup), steady(compiled[key], args.warmup)
            row = {"case": name, "kind": str(key), "phases": "+".join(sorted(phases[key])),
                   "calls": len(compiled[key]), "compile_s": f"{compile_s[key]:.2f}",
                   "eager_median_ms": f"{e[0]:.3f}", "eager_p20_ms": f"{e[1]:.3f}", "eager_p80_ms": f"{e[2]:.3f}",
                   "compile_median_ms": f"{c[0]:.3f}", "compile_p20_ms": f"{c[1]:.3f}",
                   "compile_p80_ms": f"{c[2]:.3f}", "speedup": f"{e[0] / c[0]:.2f}", "recompiles": recompiles,
                   "latents": n, "rel_err_vs_eager": f"{rel_err:.1e}", "triggers": engine.stats.reflection_triggers,
                   "cache": "warm" if args.warm_cache else "cold", "timestamp": stamp, **info}
            rows.append(row)
            print(f"{name:16s} {str(key):24s} {row['phases']:26s} calls {row['calls']:4d}  "
                  f"compile {compile_s[key]:6.1f} s  eager {e[0]:8.3f} ms [{e[1]:.3f}, {e[2]:.3f}]  "
                  f"compile {c[0]:8.3f} ms [{c[1]:.3f}, {c[2]:.3f}]"
                  f"  x{e[0] / c[0]:.2f}  recompiles {recompiles}  rel err {rel_err:.1e}")
    print(f"# wrote {write_csv(RESULTS / 'step.csv', rows)}")


if __name__ == "__main__":
    main()
