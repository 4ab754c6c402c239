"""Benchmark gated_residual (x + gate[frame] * y) vs the eager and compiled reference."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WAN, WAN_MINI, WAN_TINY, Case, h100_line, run  # noqa: E402

from miga_fast.ops.gated_residual import gated_residual, gated_residual_ref  # noqa: E402


def case(video, big=False) -> Case:
    B, F, P, D = video.batch, video.frames, video.tokens_per_frame, video.dim

    def make(dtype):
        return {"x": torch.randn(B, F, P, D, dtype=dtype), "y": torch.randn(B, F, P, D, dtype=dtype),
                "gate": torch.randn(B, F, 6, D)[:, :, 2]}

    return Case(video.name, f"x,y[{B},{F},{P},{D}] gate[{B},{F},{D}]", make, big)


def bytes_moved(a: dict) -> float:
    x = a["x"]
    return 3 * x.numel() * x.element_size() + a["gate"].numel() * 4


def ref(a):
    return lambda: gated_residual_ref(a["x"], a["y"], a["gate"])


def compiled(a):
    fn = torch.compile(gated_residual_ref, fullgraph=True)
    return lambda: fn(a["x"], a["y"], a["gate"])


def kernel(backend):
    return lambda a: lambda: gated_residual(a["x"], a["y"], a["gate"], backend=backend)


if __name__ == "__main__":
    B, F, P, D = WAN.batch, WAN.frames, WAN.tokens_per_frame, WAN.dim
    print("# H100 target, Wan2.1-1.3B 480p, bf16 tokens: "
          + h100_line(f"x,y[{B},{F},{P},{D}] read + out write", 3 * B * F * P * D * 2 + B * F * D * 4))
    with torch.no_grad():
        run("gated_residual", [case(WAN_TINY), case(WAN_MINI), case(WAN, big=True)],
            {"ref": ref, "compile": compiled, "cpp": kernel("cpp"), "triton": kernel("triton")},
            ("GB/s", "(x + y + out + gate bytes)", bytes_moved), __doc__)
