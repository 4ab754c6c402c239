"""Benchmark solver_update (CFG + DDIM / flow-Euler step into the ring) vs the engine's unfused path
(CFG combine, gathers, solver.step, index_copy_) eager and compiled."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import VC2, WAN, WAN_MINI, Case, h100_line, run  # noqa: E402

from miga_fast.ops.solver_update import solver_update, solver_update_ref  # noqa: E402
from miga_fast.solvers import DDIMSolver  # noqa: E402
from miga_fast.solvers.flow import FlowEulerSolver  # noqa: E402

T = 64


def case(video, solver_name, big=False) -> Case:
    C, H, W = video.latent
    F = video.frames
    solver = DDIMSolver(T, eta=1.0) if solver_name == "ddim" else FlowEulerSolver(T)

    def make(dtype):
        # one FIFO window (batch 1, every frame written), raw CFG output [2, C, F, H, W] as the denoiser returns it
        raw = torch.randn(2, C, F, H, W, dtype=dtype)
        tables = solver.affine_tables()
        return {"ring": torch.randn(2 * F + 3, C, H, W, dtype=dtype), "slots": torch.randperm(2 * F + 3)[:F],
                "x": torch.randn(F, C, H, W, dtype=dtype), "levels": torch.randint(0, T, (F,)),
                "pred_cond": raw[:1].permute(0, 2, 1, 3, 4), "pred_uncond": raw[1:].permute(0, 2, 1, 3, 4),
                "noise": torch.randn(F, C, H, W, dtype=dtype) if tables["c_noise"] is not None else None,
                "guidance_scale": 7.5, **tables}

    return Case(f"{video.name} {solver_name}", f"window {F}x[{C},{H},{W}] cfg", make, big)


def bytes_moved(a: dict) -> float:
    per = a["x"].numel() * a["x"].element_size()
    return per * (4 + (a["noise"] is not None))  # x, cond, uncond (, noise) read; ring rows written


def args(a):
    return {k: v for k, v in a.items() if k != "ring"}


def written(a, update):
    """`update(ring)` (in place) on this provider's own copy of the ring, returning the rows it wrote: a provider
    that writes nothing shows the copy's random rows, not another provider's results."""
    ring = a["ring"].clone()
    return lambda: (update(ring), ring[a["slots"]])[1]


def ref(a):
    return written(a, lambda ring: solver_update_ref(ring, **args(a)))


def compiled(a):
    fn = torch.compile(solver_update_ref, fullgraph=True)
    return written(a, lambda ring: fn(ring, **args(a)))


def kernel(backend):
    return lambda a: written(a, lambda ring: solver_update(ring, **args(a), backend=backend))


if __name__ == "__main__":
    C, H, W = WAN.latent
    print("# H100 target, Wan2.1-1.3B 480p window, Euler + CFG, bf16 latents: "
          + h100_line(f"4 x [{WAN.frames},{C},{H},{W}]", 4 * WAN.frames * C * H * W * 2))
    with torch.no_grad():
        run("solver_update", [case(VC2, "ddim"), case(WAN_MINI, "euler"), case(WAN, "euler")],
            {"ref": ref, "compile": compiled, "cpp": kernel("cpp"), "triton": kernel("triton")},
            ("GB/s", "(x + cond + uncond [+ noise] + ring-write bytes)", bytes_moved), __doc__)
