"""``solver_update``: fused CFG combine + one affine solver step (DDIM / flow Euler), written in place into the
latent ring.

For every output ``m`` (input row ``r = rows[m]``, default ``m``; level ``t = levels[m]``)::

    pred = uncond[r] + g * (cond[r] - uncond[r])        # cond[r] alone without pred_uncond (g == 1)
    ring[slots[m]] = c_x[t] * x[r] + c_pred[t] * pred + c_noise[t] * noise[m]

``c_x`` defaults to 1 and the noise term is dropped without ``noise``. Tables for the solvers
(``solver_tables``): DDIM ``(c_x, c_pred, c_noise) = (_c_x, _c_eps, sigmas)`` (sigmas only when eta > 0),
flow Euler ``(-, _dt, -)``; multistep solvers (UniPC) keep per-slot history and are not covered. One pass reads
x, cond, uncond (and noise) once and writes the ring once, replacing the engine's CFG pass, the ``x[w]`` /
``pred[w]`` gathers, the step and ``index_copy_``. All math in fp32, stored in the ring's dtype.

Shapes: ``ring [capacity, C, H, W]`` (contiguous); ``x``, ``pred_cond``, ``pred_uncond`` ``[N, C, H, W]`` or
``[B, F, C, H, W]`` with row ``n = b * F + f`` (any strides with contiguous H x W planes, e.g. the engine's
``pred.permute(0, 2, 1, 3, 4)`` views); ``slots``, ``levels``, ``rows`` int ``[M]``; ``noise [M, C, H, W]``;
tables float32 ``[T]``. Without ``rows``, ``M == N``. ``slots`` must be distinct and ``x`` must not alias
``ring``. Engine call site::

    new = solver.step(x[w], pred[w], levels[w], noise=noise); ring.index_copy_(0, slots[w], new)
    -> solver_update(ring, slots[w], x, levels[w], cond, uncond, guidance_scale=g, rows=w, noise=noise,
                     **solver_tables(solver))

Backends (``backend=`` / ``$MIGA_FAST_BACKEND``, see ``miga_fast.ops.backend``): ``ref`` =
``solver_update_ref``, ``triton`` = op ``miga_fast::solver_update_triton``, ``cpp`` = op
``miga_fast::solver_update``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..solvers.ddim import DDIMSolver
from ..solvers.flow import FlowEulerSolver
from . import backend as _backend

__all__ = ["solver_update", "solver_update_ref", "solver_tables"]


def solver_tables(solver) -> dict[str, Tensor | None]:
    """``c_x``, ``c_pred``, ``c_noise`` keyword arguments reproducing ``solver.step`` (DDIM, flow Euler)."""
    if isinstance(solver, DDIMSolver):
        return {"c_x": solver._c_x, "c_pred": solver._c_eps, "c_noise": solver.sigmas if solver.eta > 0 else None}
    if isinstance(solver, FlowEulerSolver):
        return {"c_x": None, "c_pred": solver._dt, "c_noise": None}
    raise TypeError(
        f"solver_update covers memoryless affine steps (DDIMSolver, FlowEulerSolver); {type(solver).__name__} "
        "keeps per-slot history: use its step()"
    )


def _flat(t: Tensor) -> Tensor:
    """``[B, F, C, H, W]`` -> ``[B*F, C, H, W]`` (``[N, C, H, W]`` unchanged)."""
    return t.flatten(0, 1) if t.dim() == 5 else t


def check_args(ring, slots, x, levels, pred_cond, pred_uncond, c_pred, c_x, c_noise, noise, rows) -> None:
    """Shapes as documented above, else ValueError (value ranges are checked by the kernels / indexing)."""
    if ring.dim() != 4:
        raise ValueError(f"solver_update: ring must be [capacity, C, H, W] (got {tuple(ring.shape)})")
    plane = tuple(ring.shape[1:])
    n = _flat(x).shape[0] if x.dim() in (4, 5) else -1
    for name, t in (("x", x), ("pred_cond", pred_cond), ("pred_uncond", pred_uncond)):
        if t is not None and (t.dim() not in (4, 5) or tuple(t.shape[-3:]) != plane or _flat(t).shape[0] != n):
            raise ValueError(f"solver_update: {name} must be [N, *{plane}] or [B, F, *{plane}] with x's N rows "
                             f"(got {tuple(t.shape)})")
    m = slots.shape[0] if slots.dim() == 1 else -1
    for name, t in (("slots", slots), ("levels", levels), ("rows", rows)):
        if t is not None and (t.dim() != 1 or t.shape[0] != m or t.is_floating_point()):
            raise ValueError(f"solver_update: {name} must be an integer [M] tensor, M = len(slots) (got "
                             f"{tuple(t.shape)} {t.dtype})")
    if rows is None and m != n:
        raise ValueError(f"solver_update: without rows, slots must have one entry per row of x ({n}, got {m})")
    if (c_noise is None) != (noise is None):
        raise ValueError("solver_update: c_noise and noise go together (both or neither)")
    if noise is not None and (tuple(noise.shape[-3:]) != plane or _flat(noise).shape[0] != m):
        raise ValueError(f"solver_update: noise must be [M, *{plane}] (got {tuple(noise.shape)})")
    for name, t in (("c_pred", c_pred), ("c_x", c_x), ("c_noise", c_noise)):
        if t is not None and (t.dim() != 1 or t.shape != c_pred.shape):
            raise ValueError(f"solver_update: {name} must be a [T] table like c_pred (got {tuple(t.shape)})")


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
        t = _flat(t)
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
        out = out + coef(c_noise) * _flat(noise).to(cdt)
    ring.index_copy_(0, slots, out.to(ring.dtype))


def solver_update_fake(ring, slots, x, levels, pred_cond, pred_uncond, guidance_scale, c_pred, c_x=None,
                       c_noise=None, noise=None, rows=None) -> None:
    """Shape function of the kernels (they only mutate ``ring``)."""
    check_args(ring, slots, x, levels, pred_cond, pred_uncond, c_pred, c_x, c_noise, noise, rows)


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
    check_args(ring, slots, x, levels, pred_cond, pred_uncond, c_pred, c_x, c_noise, noise, rows)
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
