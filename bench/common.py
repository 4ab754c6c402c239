"""Shared pieces of the fused-op benchmarks: the config registry, timing, providers and CSV output.

Run a bench from the repo root, e.g. ``python bench/bench_adaln_modulate.py`` (scaled-down shapes only) or
``--all`` (also the real model shapes: hundreds of MB per call, meant for a GPU or an idle machine).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# MIGA_BENCH_RESULTS redirects every CSV (bench/gpu_check.py keeps a GPU run's results apart from the committed ones)
RESULTS = Path(os.environ.get("MIGA_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
H100_HBM = 3.35e12  # bytes/s, H100 SXM HBM3
H100_BF16 = 989e12  # FLOP/s, H100 SXM dense bf16 tensor cores


@dataclass(frozen=True)
class Video:
    """A real generation config: latent frames and size, CFG batch, and the denoiser's attention geometry."""

    name: str
    frames: int  # latent frames in one model window
    latent: tuple[int, int, int]  # C, H, W
    batch: int = 2  # cond + uncond
    patch: int = 2  # DiT spatial patch
    dim: int = 0  # DiT width
    heads: int = 0
    head_dim: int = 0

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent[1] // self.patch) * (self.latent[2] // self.patch)


# VC2: 320x512 video, 16 frames -> 4 x 40 x 64 latents (UNet: temporal attention heads of 64 channels).
# Wan2.1-T2V-1.3B: 480x832, 81 frames -> 21 x 16 x 60 x 104 latents, 2x2 patches -> 1560 tokens per frame.
VC2 = Video("vc2-320x512x16", frames=16, latent=(4, 40, 64))
WAN = Video("wan1.3b-480x832x21", frames=21, latent=(16, 60, 104), dim=1536, heads=12, head_dim=128)
# scaled down for CPU runs: same frames/dim, 1/16 of the spatial tokens
WAN_MINI = Video("wan1.3b-mini-21f-16x26", frames=21, latent=(16, 16, 26), dim=1536, heads=12, head_dim=128)
WAN_TINY = Video("wan-tiny-5f-8x12", frames=5, latent=(16, 8, 12), dim=384, heads=4, head_dim=96)


@dataclass(frozen=True)
class Case:
    """One benchmark shape: ``make()`` builds the inputs, ``big`` marks real shapes skipped without --all."""

    config: str
    shape: str
    make: Callable[[torch.dtype], dict]
    big: bool = False


def parse_args(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--all", action="store_true", help="also run the real (big) model shapes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--providers", default=None, help="comma list of ref,compile,cpp,triton")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per provider and shape")
    return parser.parse_args()


def providers(requested: str | None, device: torch.device) -> list[str]:
    """ref / compile / cpp on CPU (cpp built on the fly if needed), ref / compile / triton on CUDA."""
    from miga_fast.ops import backend

    names = requested.split(",") if requested else (
        ["ref", "compile", "triton"] if device.type == "cuda" else ["ref", "compile", "cpp"])
    if "cpp" in names and not backend.load_extension():
        backend.build_extension()
    return names


def _outputs(out) -> list[torch.Tensor]:
    """A provider's result as a list of tensors (ops return a tensor or a tuple; in-place ops return None)."""
    if isinstance(out, torch.Tensor):
        return [out.detach().clone()]
    if isinstance(out, tuple | list):
        return [t.detach().clone() for t in out if isinstance(t, torch.Tensor)]
    return []


def max_abs_error(out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """Largest |out - ref| over the outputs, in fp32 (nan when there is nothing to compare)."""
    if not out or len(out) != len(ref):
        return float("nan")
    return max(float((a.float() - b.float()).abs().max()) if a.numel() else 0.0 for a, b in zip(out, ref, strict=True))


def time_call(fn: Callable[[], object], device: torch.device, seconds: float) -> list[float]:
    """Per-call wall times (s): 3 warm-up calls, then >= 5 and <= 200 timed calls within ~``seconds``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < seconds and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def quantiles(times: list[float]) -> tuple[float, float, float, float]:
    """(median, 20th, 80th percentile, min) in ms; the min is the least disturbed call on a shared machine."""
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times) * 1e3, q[1] * 1e3, q[7] * 1e3, min(times) * 1e3


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.util

    triton = "-"
    if importlib.util.find_spec("triton") is not None:
        import triton as _triton

        triton = _triton.__version__
    return {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "-",
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "triton": triton,
        "python": sys.version.split()[0],
    }


def run(op: str, cases: list[Case], fns: dict[str, Callable], metric: tuple[str, str, Callable[[dict], float]],
        doc: str) -> None:
    """Time every provider on every case, print a table and write ``bench/results/<op>.csv``.

    ``fns[provider](inputs) -> callable``; ``metric = (unit, formula, work(inputs))`` with work in bytes or FLOPs
    (reported per second, /1e9 for GB/s or /1e12 for TFLOP/s).
    """
    args = parse_args(doc)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    names = providers(args.providers, device)
    unit, formula, work = metric
    scale = 1e9 if unit == "GB/s" else 1e12
    info = machine()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"# {op} on {info['cpu']} ({info['threads']} threads), gpu {info['gpu']}, torch {info['torch']}, "
          f"triton {info['triton']}, {args.dtype}\n# {unit} = {formula} / median time")
    rows = []
    for case in cases:
        if case.big and not args.all:
            print(f"{case.config:28s} {case.shape:34s} skipped (big; --all)")
            continue
        torch.manual_seed(0)
        inputs = case.make(dtype)
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        reference = _outputs(fns["ref"](inputs)())  # every provider's error is against the eager reference
        for name in names:
            fn = fns[name](inputs)
            err = max_abs_error(_outputs(fn()), reference)
            med, p20, p80, low = quantiles(time_call(fn, device, args.seconds))
            value = work(inputs) / (med / 1e3) / scale
            print(f"{case.config:28s} {case.shape:34s} {name:8s} {med:9.3f} ms  [p20 {p20:9.3f}, p80 {p80:9.3f}]"
                  f" min {low:9.3f}  {value:8.3f} {unit}  max|err| {err:.3g}")
            rows.append({"op": op, "config": case.config, "shape": case.shape, "dtype": args.dtype,
                         "provider": name, "median_ms": f"{med:.4f}", "p20_ms": f"{p20:.4f}",
                         "p80_ms": f"{p80:.4f}", "min_ms": f"{low:.4f}", "metric": unit, "value": f"{value:.4f}",
                         "max_abs_err_vs_ref": f"{err:.3g}",
                         "formula": formula, "timestamp": stamp, **info})
            del fn
    print(f"# wrote {write_csv(RESULTS / f'{op}.csv', rows)}")


def write_csv(path: Path, rows: list[dict], float_format: str | None = None) -> Path:
    """Write `rows` to `path`: columns are every key in first-seen order (a key missing from a row is an empty
    cell, as is None); floats as `float_format` when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["empty"],
                                restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else format(v, float_format) if float_format and isinstance(v, float)
                             else v for k, v in r.items()})
    return path


def h100_line(what: str, nbytes: float, flops: float = 0.0) -> str:
    """Bytes/FLOPs of one call and its time at 70% of H100 HBM bandwidth (and at 70% of dense bf16 peak)."""
    line = f"{what}: {nbytes / 1e6:.1f} MB -> {nbytes / (0.7 * H100_HBM) * 1e6:.1f} us at 70% of 3.35 TB/s"
    if flops:
        line += f"; {flops / 1e9:.1f} GFLOP -> {flops / (0.7 * H100_BF16) * 1e6:.1f} us at 70% of 989 TFLOP/s"
    return line + " (not measured on GPU)"
