"""The bundled model's window call against this machine's GEMM peak, with a profile of where the time goes.

Times one CFG window call of the bundled denoiser (batch 2, the native window f0 = 8 frames, 32x32, per-frame
timesteps), eager and torch.compile'd (the compile, i.e. the first call, reported apart), medians of --repeats
after --warmup, and a 2048^3 fp32 matmul on the same threads right before and after each timing (their mean is
the peak of that row), in one process; FLOPs of the call by torch's
FlopCounterMode (attention included: see count_cpu_attention_flops). Prints GFLOP/s, the ratio to the GEMM peak
and the top ops of a torch.profiler run; writes results/denoiser_peak.csv (one row per dtype and executor).

    OMP_NUM_THREADS=2 python bench/denoiser_peak.py [--dtypes float32,bfloat16] [--threads 2]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from common import RESULTS, machine, write_csv  # noqa: E402


def count_cpu_attention_flops() -> None:
    """FlopCounterMode has no formula for CPU flash attention and counts it as 0 FLOPs (torch 2.13): the
    bundled model's self-attention is about half of its arithmetic. 2*B*H*Sq*Sk*(d_qk + d_v), as for CUDA SDPA."""
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        b, h, s_q, d = query_shape
        return 2 * b * h * s_q * key_shape[2] * (d + value_shape[3])


def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--profile-rows", type=int, default=12)
    p.add_argument("--executors", default="eager,compile", help="eager and/or compile (torch.compile of denoise)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python bench/denoiser_peak.py " + shlex.join(sys.argv[1:])
    print(command)
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention_flops()

    from miga_fast.models.tiny.bundle import DEFAULT_WEIGHTS, TinyVideoModel

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)

    def gemm_peak() -> float:
        return 2 * 2048**3 / median_seconds(lambda: a @ b, 2, 5) / 1e9

    rows = []
    for name, executor in [(d, e) for d in args.dtypes.split(",") for e in args.executors.split(",")]:
        dtype = getattr(torch, name)
        model = TinyVideoModel.load(DEFAULT_WEIGHTS).to(dtype).eval()
        denoise = model.denoise if executor == "eager" else torch.compile(model.denoise, fullgraph=True)
        spec = model.spec
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, spec.window, spec.frame_size, spec.frame_size, generator=g)
        t = torch.rand(2, spec.window, generator=g) * 1000
        cond = torch.randn(2, spec.text_length, spec.text_dim, generator=g)
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                model.denoise(x, t, cond)
            flops = counter.get_total_flops()
            t0 = time.perf_counter()
            denoise(x, t, cond)  # compile mode: the compile (reported apart)
            first_s = time.perf_counter() - t0
            # the peak right before and after the call's timing: a machine whose speed drifts (shared hosts) moves
            # both alike, so the ratio stays a same-conditions figure
            before = gemm_peak()
            call_s = median_seconds(lambda f=denoise, a=(x, t, cond): f(*a), args.warmup, args.repeats)
            peak = statistics.median([before, gemm_peak()])
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    denoise(x, t, cond)
        gflops = flops / call_s / 1e9
        print(f"{name} {executor}: first call {first_s:.1f} s; window call {call_s * 1e3:.2f} ms, "
              f"{flops / 1e9:.3f} GFLOP -> {gflops:.1f} GFLOP/s = "
              f"{100 * gflops / peak:.1f}% of the fp32 GEMM peak {peak:.1f} GFLOP/s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
        rows.append({"dtype": name, "executor": executor, "first_call_s": round(first_s, 2),
                     "call_ms": round(call_s * 1e3, 3), "gflop": round(flops / 1e9, 4),
                     "gflop_per_s": round(gflops, 2), "gemm_peak_gflop_per_s": round(peak, 2),
                     "ratio_to_peak": round(gflops / peak, 4), "threads": torch.get_num_threads(),
                     "repeats": args.repeats, "command": command, **machine()})
    print(f"wrote {write_csv(RESULTS / 'denoiser_peak.csv', rows)}")


if __name__ == "__main__":
    main()
