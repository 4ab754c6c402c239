"""``solver_update``: fused CFG combine + one affine solver step (DDIM / flow Euler), written in place into the
latent ring.

For every output ``m`` (input row ``r = rows[m]``, default ``m``; level ``t = levels[m]``)::

    pred = uncond[r] + g * (cond[r] - uncond[r])        # cond[r] alone without pred_uncond (g == 1)
    ring[slots[m]] = c_x[t] * x[r] + c_pred[t] * pred + c_noise[t] * noise[m]

``c_x`` defaults to 1 and the noise term is dropped without ``noise``. Tables for the solvers
(``Solver.affine_tables()``): DDIM ``(c_x, c_pred, c_noise) = (_c_x, _c_eps, sigmas)`` (sigmas only when eta > 0),
flow Euler ``(-, _dt, -)``; multistep solvers (UniPC) keep per-slot history and are not covered. One pass reads
x, cond, uncond (and noise) once and writes the ring once, replacing the engine's CFG pass, the ``x[w]`` /
``pred[w]`` gathers, the step and ``index_copy_``. All math in fp32, stored in the ring's dtype.

Shapes: ``ring [capacity, C, H, W]`` (contiguous); ``x``, ``pred_cond``, ``pred_uncond`` ``[N, C, H, W]`` or
``[B, F, C, H, W]`` with row ``n = b * F + f`` (any strides with contiguous H x W planes, e.g. the engine's
``pred.permute(0, 2, 1, 3, 4)`` views); ``slots``, ``levels``, ``rows`` int ``[M]``; ``noise [M, C, H, W]``;
tables float32 ``[T]``. Without ``rows``, ``M == N``. ``slots`` must be distinct, except for a row whose value
does not matter (the engine's dump slot, which every read-only window row targets: it ends up holding one of
them), and ``x`` must not alias ``ring``. Engine call site (runtime/step.py, the fused option of the step)::

    solver_update(dst, write_slots, x, levels, cond, uncond, guidance_scale=g, noise=noise,
                  **solver.affine_tables())

Backends (``backend=`` / ``$MIGA_FAST_BACKEND``, see ``miga_fast.ops.backend``): ``ref`` =
``solver_update_ref``, ``triton`` = op ``miga_fast::solver_update_triton``, ``cpp`` = op
``miga_fast::solver_update``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backend as _backend
from .shapes import check_solver_update, flat_rows, solver_update_fake

__all__ = ["solver_update", "solver_update_ref"]


def solver_update_ref(
    ring: Tensor,
    slots: Tensor,
    x: Tensor,
    levels: Tensor,
    pred_cond: Tensor,
    pred_uncond: Tensor | None = None,
    *,
    guidance_scale: float = 1.0,
    c_pred: Tensor,
    c_x: Tensor | None = None,
    c_noise: Tensor | None = None,
    noise: Tensor | None = None,
    rows: Tensor | None = None,
) -> None:
    """Reference: the same formula with torch ops (fp32 math, ``index_copy_`` into ``ring``)."""
    cdt = torch.promote_types(ring.dtype, torch.float32)

    def pick(t: Tensor) -> Tensor:
        t = flat_rows(t)
        return (t if rows is None else t[rows]).to(cdt)

    def coef(table: Tensor) -> Tensor:
        return table[levels].to(cdt).view(-1, 1, 1, 1)

    pred = pick(pred_cond)
    if pred_uncond is not None:
        uncond = pick(pred_uncond)
        pred = uncond + guidance_scale * (pred - uncond)
    xs = pick(x)
    out = (xs if c_x is None else coef(c_x) * xs) + coef(c_pred) * pred
    if noise is not None:
        out = out + coef(c_noise) * flat_rows(noise).to(cdt)
    ring.index_copy_(0, slots, out.to(ring.dtype))


def _triton_op():
    from miga_fast.kernels.solver_update import solver_update_triton  # imports triton: first use only

    return solver_update_triton


def solver_update(
    ring: Tensor,
    slots: Tensor,
    x: Tensor,
    levels: Tensor,
    pred_cond: Tensor,
    pred_uncond: Tensor | None = None,
    *,
    guidance_scale: float = 1.0,
    c_pred: Tensor,
    c_x: Tensor | None = None,
    c_noise: Tensor | None = None,
    noise: Tensor | None = None,
    rows: Tensor | None = None,
    backend: str | None = None,
) -> None:
    """CFG + solver step of rows ``rows`` (default all) of ``x``, written to ``ring[slots]`` in place."""
    check_solver_update(ring, slots, x, levels, pred_cond, pred_uncond, c_pred, c_x, c_noise, noise, rows)
    g = float(guidance_scale)
    tensors = [t for t in (ring, x, pred_cond, pred_uncond, noise) if t is not None]
    which = _backend.resolve("solver_update", ring.device, tuple(t.dtype for t in tensors), backend)
    if which == "ref":
        solver_update_ref(ring, slots, x, levels, pred_cond, pred_uncond, guidance_scale=g, c_pred=c_pred, c_x=c_x,
                          c_noise=c_noise, noise=noise, rows=rows)
    else:
        op = torch.ops.miga_fast.solver_update if which == "cpp" else _triton_op()
        op(ring, slots, x, levels, pred_cond, pred_uncond, g, c_pred, c_x, c_noise, noise, rows)


_backend.register_cpp_fake("solver_update", solver_update_fake)
_backend.load_extension()
