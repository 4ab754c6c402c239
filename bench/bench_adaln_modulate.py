"""Benchmark adaln_modulate (fused LayerNorm + per-frame modulation) vs the eager and compiled reference."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WAN, WAN_MINI, WAN_TINY, Case, h100_line, run  # noqa: E402

from miga_fast.ops.adaln_modulate import adaln_modulate, adaln_modulate_ref  # noqa: E402

EPS = 1e-6


def case(video, big=False) -> Case:
    B, F, P, D = video.batch, video.frames, video.tokens_per_frame, video.dim

    def make(dtype):
        mod = torch.randn(B, F, 6, D)  # fp32 per-frame vectors, strided views as in WanBlock
        return {"x": torch.randn(B, F, P, D, dtype=dtype), "shift": mod[:, :, 0], "scale": mod[:, :, 1]}

    return Case(video.name, f"x[{B},{F},{P},{D}] mod[{B},{F},{D}]", make, big)


def bytes_moved(a: dict) -> float:
    x = a["x"]
    return 2 * x.numel() * x.element_size() + 2 * a["shift"].numel() * 4


def ref(a):
    return lambda: adaln_modulate_ref(a["x"], a["shift"], a["scale"], eps=EPS, dtype=a["x"].dtype)


def compiled(a):
    fn = torch.compile(adaln_modulate_ref, fullgraph=True)
    return lambda: fn(a["x"], a["shift"], a["scale"], eps=EPS, dtype=a["x"].dtype)


def kernel(backend):
    return lambda a: lambda: adaln_modulate(a["x"], a["shift"], a["scale"], eps=EPS, dtype=a["x"].dtype,
                                            backend=backend)


if __name__ == "__main__":
    B, F, P, D = WAN.batch, WAN.frames, WAN.tokens_per_frame, WAN.dim
    print("# H100 target, Wan2.1-1.3B 480p, bf16 tokens: "
          + h100_line(f"x[{B},{F},{P},{D}] read + write", 2 * B * F * P * D * 2 + 2 * B * F * D * 4))
    with torch.no_grad():
        run("adaln_modulate", [case(WAN_TINY), case(WAN_MINI), case(WAN, big=True)],
            {"ref": ref, "compile": compiled, "cpp": kernel("cpp"), "triton": kernel("triton")},
            ("GB/s", "(x + out + shift + scale bytes)", bytes_moved), __doc__)
