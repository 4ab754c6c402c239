"""Benchmark hetero_attention: Wan windows (long, with/without context-query skipping) and VC2 temporal
attention (many sequences of 16 frames) vs SDPA eager and compiled."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import VC2, WAN, Case, h100_line, run  # noqa: E402

from miga_fast.ops.hetero_attention import hetero_attention, hetero_attention_ref  # noqa: E402


def case(config, B, H, S, d, skip=0, big=False) -> Case:
    def make(dtype):
        # [B, S, H, d] projections viewed as [B, H, S, d], as the models pass them
        q, k, v = (torch.randn(B, S, H, d, dtype=dtype).transpose(1, 2) for _ in range(3))
        return {"q": q, "k": k, "v": v, "skip": skip}

    return Case(config, f"[{B},{H},{S},{d}] skip {skip}", make, big)


def flops(a: dict) -> float:
    B, H, Sq, d = a["q"].shape
    return 4 * B * H * (Sq - a["skip"]) * a["k"].shape[2] * d


def ref(a):
    return lambda: hetero_attention_ref(a["q"], a["k"], a["v"], skip_queries=a["skip"])


def compiled(a):
    fn = torch.compile(hetero_attention_ref, fullgraph=True)
    return lambda: fn(a["q"], a["k"], a["v"], skip_queries=a["skip"])


def kernel(backend):
    return lambda a: lambda: hetero_attention(a["q"], a["k"], a["v"], skip_queries=a["skip"], backend=backend)


def vc2_temporal(h, w, heads, big=False) -> Case:
    # [B * H' * W', heads, frames, 64] at one UNet level of the 40 x 64 latent
    return case(f"{VC2.name} temporal {h}x{w}", VC2.batch * h * w, heads, VC2.frames, 64, big=big)


CASES = [
    # Wan window scaled down: 21 frames x 52 tokens, 2 of the 12 heads; then 4 context frames skipped
    case("wan1.3b-mini-21f-52tok", 1, 2, 21 * 52, 128),
    case("wan1.3b-mini-21f-52tok", 1, 2, 21 * 52, 128, skip=4 * 52),
    vc2_temporal(5, 8, 20),  # VC2 middle block (real shape)
    vc2_temporal(10, 16, 20),  # VC2 level 2 (real shape)
    vc2_temporal(20, 32, 10, big=True),
    vc2_temporal(40, 64, 5, big=True),
    case(WAN.name, WAN.batch, WAN.heads, WAN.frames * WAN.tokens_per_frame, WAN.head_dim, big=True),
]

if __name__ == "__main__":
    B, H, S, d = WAN.batch, WAN.heads, WAN.frames * WAN.tokens_per_frame, WAN.head_dim
    print("# H100 target, Wan2.1-1.3B 480p self-attention, bf16: "
          + h100_line(f"q,k,v,o[{B},{H},{S},{d}]", 4 * B * H * S * d * 2, 4 * B * H * S * S * d))
    print("# H100 target, VC2 temporal 40x64, bf16: "
          + h100_line("q,k,v,o[5120,5,16,64]", 4 * 5120 * 5 * 16 * 64 * 2, 4 * 5120 * 5 * 16 * 16 * 64))
    with torch.no_grad():
        run("hetero_attention", CASES,
            {"ref": ref, "compile": compiled, "cpp": kernel("cpp"), "triton": kernel("triton")},
            ("TFLOP/s", "4 * B * H * (Sq - skip) * Sk * d", flops), __doc__)
