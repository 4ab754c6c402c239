"""Engine step benchmark: per step kind, the first call (compile / CUDA-graph capture) and steady-state call time
of each engine mode, the bare denoiser beside them, equality with eager, recompiles and (CUDA) memory per call.

Each case runs one plan once per engine mode (`--modes`, eager first: the reference) in the same process, timing
every model call (host input preparation + denoiser + solver + ring write: the whole `StaticStepper.execute`,
synchronised on CUDA). Per step kind: the first call of each mode (compile or capture + one step; cold caches
unless --warm-cache), medians and 20/80th percentiles over the calls after `--warmup` per kind, the bare denoiser
on that kind's input (`denoiser_ms`: the floor the step adds its overhead to), and on CUDA the peak memory of the
steady calls (`<mode>_peak_mb`) and how much it varies between them (`<mode>_peak_spread_mb`: 0 means flat).
Recompiles (compile mode) = graphs compiled minus step kinds, with dynamo's error_on_recompile on.
Writes bench/results/step.csv after every case.

    python bench/bench_step.py [--cases toy-fifo,wan-fifo] [--warm-cache] [--threads 1]
    python bench/bench_step.py --cases wan13b-fifo,wan13b-miga-stream --device cuda --dtype bfloat16 \
        --modes eager,graph,compile --layers 4        # Wan2.1-1.3B width at 480p, random weights (GPU check)
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
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


def toy(device, dtype, layers):
    return ToyDenoiser(channels=4, cond_dim=8).eval().to(device), (4, 6, 6), (3, 8)


def wan(device, dtype, layers):
    torch.manual_seed(0)
    return WanDiT(TINY_WAN).eval().to(device, dtype).denoise, (4, 8, 8), (3, 8)


def wan13b(device, dtype, layers):
    """Wan2.1-T2V-1.3B's width, heads, FFN and text at 480p latents (21 x 60 x 104 per window: 32,760 tokens),
    random weights and `layers` of its 30 blocks (a call's time scales with the blocks; the engine's does not)."""
    torch.manual_seed(0)
    cfg = WanConfig(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=layers)
    return WanDiT(cfg).eval().to(device, dtype).denoise, (16, 60, 104), (512, 4096)


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
    # the official Wan2.1-1.3B schedules with fewer steps (the same window and step kinds, fewer calls)
    "wan13b-miga": (wan13b, "wan-miga", dict(num_steps=21, reflection=False), 2),
    "wan13b-miga-stream": (wan13b, "wan-miga-stream", dict(num_steps=21, reflection=False), 2),
}
MODES = ("eager", "compile", "graph")


def timed_run(model, shape, cond_shape, cfg, n, mode, device) -> dict:
    """One run: per-kind wall times and (CUDA) peak memory of every model call, the phases seen per kind, the
    engine, the output latents [n, C, H, W] and per kind one call's batch (to time the bare denoiser)."""
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(1, *cond_shape, generator=g), torch.randn(1, *cond_shape, generator=g) * 0.1
    engine = Engine(model, solver_for(cfg), cfg, shape, cond=cond, uncond=uncond, guidance_scale=3.0, seed=3,
                    mode=mode, device=device)
    cuda = engine.device.type == "cuda"
    times: dict[StepKey, list[float]] = defaultdict(list)
    peaks: dict[StepKey, list[float]] = defaultdict(list)
    phases: dict[StepKey, set[str]] = defaultdict(set)
    execute = engine.stepper.execute

    def timed(calls, *args):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = execute(calls, *args)
        if cuda:
            torch.cuda.synchronize()
        key = engine.stepper.last_key
        times[key].append(time.perf_counter() - start)
        if cuda:
            peaks[key].append(torch.cuda.max_memory_allocated() / 2**20)
        phases[key].add(calls[0].phase)
        return out

    engine.stepper.execute = timed
    with torch.no_grad():
        out = torch.stack(list(engine.run(n)))
    return dict(times=times, peaks=peaks, phases=phases, engine=engine, out=out)


def steady(times: list[float], warmup: int) -> tuple[float, float, float, float]:
    """quantiles() of the calls after `warmup` (after the first call at least, for kinds with few calls);
    NaN for a kind that ran once: its only call is the compiling one, there is no steady state."""
    if len(times) < 2:
        return (float("nan"),) * 4
    rest = times[warmup:] if len(times) > warmup + 1 else times[1:]
    return quantiles(rest * 2 if len(rest) < 2 else rest)


def denoiser_ms(model, shape, cond_shape, key: StepKey, device, repeats: int = 5) -> float:
    """Median ms of the bare denoiser on one call of kind `key` (CFG: 2B windows of F frames)."""
    rows = 2 * key.batch
    x = torch.randn(rows, shape[0], key.frames, *shape[1:], device=device)
    t = torch.full((rows, key.frames), 500.0, device=device)
    c = torch.randn(rows, *cond_shape, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            sync()
            start = time.perf_counter()
            model(x, t, c)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def case_rows(name: str, args, info: dict, stamp: str) -> list[dict]:
    factory, preset_name, overrides, n = CASES[name]
    model, shape, cond_shape = factory(args.device, getattr(torch, args.dtype), args.layers)
    cfg = preset(preset_name, **overrides)
    runs, recompiles = {}, None
    for mode in args.modes:
        before = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=mode == "compile"):
            runs[mode] = timed_run(model, shape, cond_shape, cfg, n, mode, args.device)
        if mode == "compile":
            recompiles = counters["stats"]["unique_graphs"] - before - len(runs[mode]["times"])
    ref = runs[args.modes[0]]
    rows = []
    for key in sorted(ref["times"], key=str):
        row = {"case": name, "kind": str(key), "phases": "+".join(sorted(ref["phases"][key])),
               "calls": len(ref["times"][key]), "latents": n,
               "denoiser_ms": f"{denoiser_ms(model, shape, cond_shape, key, args.device):.3f}"}
        base = steady(ref["times"][key], args.warmup)[0]
        line = (f"{name:18s} {str(key):24s} {row['phases']:26s} calls {row['calls']:4d}  "
                f"denoiser {row['denoiser_ms']} ms")
        for mode, run in runs.items():
            med, p20, p80, _ = steady(run["times"][key], args.warmup)
            # relative to the largest value: the same criterion as tests/runtime/test_compile.py (<= 1e-4)
            rel_err = ((run["out"] - ref["out"]).abs().max() / ref["out"].abs().max().clamp_min(1.0)).item()
            row.update({f"{mode}_first_s": f"{run['times'][key][0]:.2f}", f"{mode}_median_ms": f"{med:.3f}",
                        f"{mode}_p20_ms": f"{p20:.3f}", f"{mode}_p80_ms": f"{p80:.3f}",
                        f"{mode}_speedup": f"{base / med:.2f}", f"{mode}_rel_err": f"{rel_err:.1e}"})
            peaks = run["peaks"][key][1:]
            if peaks:
                row.update({f"{mode}_peak_mb": f"{max(peaks):.1f}",
                            f"{mode}_peak_spread_mb": f"{max(peaks) - min(peaks):.1f}"})
            line += f"  {mode} {med:8.3f} ms (first {run['times'][key][0]:.1f} s, x{base / med:.2f}, err {rel_err:.0e})"
        row.update({"recompiles": "" if recompiles is None else recompiles,
                    "triggers": ref["engine"].stats.reflection_triggers, "device": args.device,
                    "dtype": args.dtype, "layers": args.layers, "cache": "warm" if args.warm_cache else "cold",
                    "timestamp": stamp, **info})
        rows.append(row)
        print(line + (f"  recompiles {recompiles}" if recompiles is not None else ""), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(c for c in CASES if not c.startswith("wan13b")),
                        help=f"comma list of {list(CASES)} (default: all but the wan13b-* GPU cases)")
    parser.add_argument("--modes", default="eager,compile",
                        help=f"comma list of engine modes {MODES}, the first is the reference (graph: CUDA only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="the denoiser's weights (the engine's latents stay fp32)")
    parser.add_argument("--layers", type=int, default=4, help="blocks of the wan13b-* DiTs (Wan2.1-1.3B has 30)")
    parser.add_argument("--warmup", type=int, default=3, help="calls per kind excluded from the steady state")
    parser.add_argument("--warm-cache", action="store_true", help="allow inductor's on-disk caches (warm compiles)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared CPU, OpenMP barriers with a descheduled thread swamp "
                             "millisecond steps)")
    args = parser.parse_args(argv)
    args.modes = args.modes.split(",")
    for value, allowed, what in ((args.cases.split(","), CASES, "--cases"), (args.modes, MODES, "--modes")):
        bad = [v for v in value if v not in allowed]
        if bad:
            parser.error(f"{what}: {bad} not among {list(allowed)}")
    if "graph" in args.modes and torch.device(args.device).type != "cuda":
        parser.error("--modes graph needs --device cuda (CUDA graphs)")
    torch.set_num_threads(args.threads)
    info = machine()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"# step bench on {info['cpu']} ({info['threads']} threads), torch {info['torch']}, {args.device} "
          f"{args.dtype}, {'warm' if args.warm_cache else 'cold'} compile caches")
    rows = []
    for name in args.cases.split(","):
        rows += case_rows(name, args, info, stamp)
        path = write_csv(RESULTS / "step.csv", rows)  # after every case: a timeout keeps the finished ones
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
