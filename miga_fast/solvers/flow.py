"""Per-slot flow-matching solvers (Wan2.1 / MIGA-Wan): Euler and multistep UniPC.

Flow convention (rectified flow): ``x_sigma = (1 - sigma) x0 + sigma noise`` and the model predicts the
velocity ``v = noise - x0``, so ``x0 = x - sigma v``. Level ``i`` uses the ``(T-1-i)``-th sigma of the
sampling schedule (level ``T-1`` = largest sigma, level 0 = last nonzero sigma); the step at level 0
lands on sigma 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import require
from .base import Solver, compute_dtype, per_latent

FLOW_SCHEDULES = ("wan", "diffusers_euler", "diffusers_unipc")


def flow_schedule(
    num_steps: int, shift: float = 5.0, schedule: str = "wan", num_train_timesteps: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Sampling sigmas (float32 ``[T]``, descending, terminal 0 excluded) and model timesteps (``[T]``).

    The three grids are close but not equal; each reproduces one reference ``set_timesteps(T)``:
      * ``"wan"``: Wan2.1 ``FlowUniPCMultistepScheduler(shift=1).set_timesteps(T, shift=shift)`` as built
        by MIGA-Wan ``text2video.py``: ``shift(linspace(float32(0.999), 0, T+1)[:-1])``; the model is fed
        ``int64(sigma * 1000)`` (truncated, computed in float64).
      * ``"diffusers_unipc"``: diffusers ``UniPCMultistepScheduler(use_flow_sigmas=True,
        flow_shift=shift)``: ``shift(linspace(1, 1/1000, T+1)[:-1])`` with ``sigma[0] -= 1e-6`` if it is 1;
        timesteps truncated like Wan.
      * ``"diffusers_euler"``: diffusers ``FlowMatchEulerDiscreteScheduler(shift=shift)``:
        ``shift(linspace(1, sigma_min, T))`` where ``sigma_min = shift(1/1000)`` in float32 (the low end
        is shifted twice); timesteps are the float32 ``sigma * 1000``.
    """
    require(schedule in FLOW_SCHEDULES, "schedule", f"one of {FLOW_SCHEDULES}", schedule)
    n = num_train_timesteps

    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)

    if schedule == "wan":
        # Wan keeps its training sigmas 1 - linspace(1, 1/n, n)[::-1] in float32 and reads sigmas[0].item().
        sigma_max = float(np.float32(1.0 - 1.0 / n))
        sigmas = shifted(np.linspace(sigma_max, 0.0, num_steps + 1)[:-1])
        timesteps = (sigmas * n).astype(np.int64).astype(np.float64)
    elif schedule == "diffusers_unipc":
        sigmas = shifted(np.linspace(1.0, 1.0 / n, num_steps + 1)[:-1])
        if abs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # diffusers: keeps log(alpha) finite in the UniPC update
        timesteps = (sigmas * n).astype(np.int64).astype(np.float64)
    else:  # "diffusers_euler"
        # The end points come from the float32 training sigmas (shifted once, in float32), then the
        # sampling grid is shifted again in float64.
        sigma_max, sigma_min = shifted(torch.tensor([n, 1], dtype=torch.float32) / n).tolist()
        sigmas = shifted(np.linspace(sigma_max * n, sigma_min * n, num_steps) / n)
        timesteps = (torch.from_numpy(sigmas.astype(np.float32)) * n).double().numpy()
    return sigmas.astype(np.float32), timesteps


class _FlowSolver(Solver):
    """Shared sigma tables (float32 ``[T]``): ``sigmas[i]`` of level i, ``sigmas_next[i]`` after its step."""

    prediction = "flow"

    def __init__(self, num_steps: int, shift: float, schedule: str, device: torch.device | str | None):
        require(num_steps >= 1, "num_steps", ">= 1", num_steps)
        self.num_steps = num_steps
        self.shift = float(shift)
        self.schedule = schedule
        sigmas, timesteps = flow_schedule(num_steps, shift, schedule)
        desc = np.concatenate([sigmas, np.zeros(1, np.float32)])  # sampling order, terminal 0 appended
        self._desc = desc.astype(np.float64)  # exact float32 values, for building coefficient tables
        self.sigmas = torch.tensor(desc[:-1][::-1].copy(), device=device)
        self.sigmas_next = torch.tensor(desc[1:][::-1].copy(), device=device)
        self.timesteps = torch.tensor(timesteps[::-1].copy(), dtype=torch.float32, device=device)

    def model_timesteps(self, levels: Tensor) -> Tensor:
        """What the reference pipeline feeds the denoiser (see ``flow_schedule``), float32 ``[N]``."""
        return self.timesteps[levels]

    def add_noise(self, x: Tensor, noise: Tensor, levels: Tensor) -> Tensor:
        """``(1 - sigma_i) x + sigma_i noise`` per latent; ``x, noise [N, ...]``."""
        cdt = compute_dtype(x.dtype)
        sigma = per_latent(self.sigmas[levels], x)
        return ((1 - sigma) * x.to(cdt) + sigma * noise.to(cdt)).to(x.dtype)


class FlowEulerSolver(_FlowSolver):
    """Flow-matching Euler ``x_next = x + (sigma_next - sigma) v``.

    Same update as diffusers ``FlowMatchEulerDiscreteScheduler.step`` (deterministic mode).
    Memoryless; ``slots``, ``state`` and ``noise`` are ignored.
    """

    def __init__(
        self,
        num_steps: int,
        *,
        shift: float = 5.0,
        schedule: str = "wan",
        device: torch.device | str | None = None,
    ):
        super().__init__(num_steps, shift, schedule, device)
        # float32 difference of the float32 sigmas, exactly as diffusers forms dt.
        self._dt = self.sigmas_next - self.sigmas

    def affine_tables(self) -> dict[str, Tensor | None]:
        return {"c_x": None, "c_pred": self._dt, "c_noise": None}

    def step(
        self,
        x: Tensor,
        pred: Tensor,
        levels: Tensor,
        *,
        slots: Tensor | None = None,
        state: dict[str, Tensor] | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Euler step of ``x [N, ...]`` with velocity ``pred [N, ...]``; fp32 math, result in ``x.dtype``."""
        cdt = compute_dtype(x.dtype)
        return (x.to(cdt) + per_latent(self._dt[levels], x) * pred.to(cdt)).to(x.dtype)


# Column layout of FlowUniPCSolver's coefficient table (see its docstring).
_E, _A, _B, _C, _D, _F, _G, _H = range(8)


class FlowUniPCSolver(_FlowSolver):
    """UniPC (bh2, predict_x0, solver_order=2, flow prediction) with per-slot history.

    Reproduces Wan2.1 ``FlowUniPCMultistepScheduler`` (= diffusers ``UniPCMultistepScheduler`` with
    ``use_flow_sigmas=True, prediction_type="flow_prediction"``) with its Wan configuration:
    ``solver_type="bh2"``, ``predict_x0=True``, ``lower_order_final=True`` (applied at every T: order 1
    on the last step), ``disable_corrector=[]``, ``thresholding=False``, ``solver_p=None``,
    ``final_sigmas_type="zero"``, ``use_dynamic_shifting=False``; it is MIGA's ``step_by_different_e``
    with its per-frame dict (``model_outputs``, ``last_sample``, ``this_order``) moved into ``state``
    rows. Per slot and step, with ``m = x - sigma v`` the x0 prediction and ``k`` the number of steps
    the slot has taken since its last reset (saturated at 2):

      * corrector (UniC): ``x_c = E x + A last + B m1 + C m2 + D m`` where ``last`` is the slot's
        previous corrected sample and ``m1, m2`` its previous two x0 predictions; order ``min(k, 2)``
        (= the previous predictor order); for k = 0 it is skipped (E = 1, the rest 0);
      * predictor (UniP): ``x_next = F x_c + G m + H m1``; order 1 on a slot's first step (warm-up,
        MIGA's "model_outputs[0] is None") and on level 0 (lower_order_final), else 2.

    Each slot walks the sigma grid one level per step, so all coefficients depend only on
    ``(level, min(k, 2))`` and are precomputed (float64, from the float32 sigmas) into a table ``[T, 3, 8]``,
    folded into one float32 mixing matrix per (level, k): ``[x_c, m, m1, x_next] = W [x, v, last, m1, m2]``,
    so a step is one gather of the slot's history, one batched matmul and one scatter (a handful of ops where
    the formulas above are ~25: on small latents the op count, not the arithmetic, is the cost). Unlike
    Wan/MIGA, the level is given explicitly instead of being looked up from the int timestep (with shift 5 the truncated
    timesteps start to collide for T >= 250 and the lookup then picks the wrong sigma). MIGA's
    scheduler-wide ``lower_order_nums`` is already saturated by its initial full-clip sampling, so its
    per-frame warm-up is the ``model_outputs[0] is None`` rule, which ``k`` reproduces.

    ``state`` (from ``init_state``): ``history [capacity, 3, ...]`` (``last_sample``, ``x0_prev``, ``x0_prev2``)
    and ``count`` int64 ``[capacity]``; ``slots`` must be distinct within one call.
    """

    def __init__(
        self,
        num_steps: int,
        *,
        shift: float = 5.0,
        schedule: str = "wan",
        device: torch.device | str | None = None,
    ):
        super().__init__(num_steps, shift, schedule, device)
        self._mix = torch.tensor(self._mixing(self._coefficients()), dtype=torch.float32, device=device)

    def _mixing(self, coef: np.ndarray) -> np.ndarray:
        """float64 ``[T, 3, 4, 5]``: per (level, k) the rows x_c, m, m1, x_next over inputs (x, v, last, m1, m2)."""
        E, A, B, C, D, F, G, H = np.moveaxis(coef, -1, 0)  # each [T, 3]
        sig = self._desc[:-1][::-1][:, None]  # [T, 1] sigma of each level
        zero, one = np.zeros_like(E), np.ones_like(E)
        m = np.stack([one, -sig * one, zero, zero, zero], -1)
        x_c = np.stack([E + D, -D * sig, A, B, C], -1)
        m1 = np.stack([zero, zero, zero, one, zero], -1)
        x_next = F[..., None] * x_c + G[..., None] * m + H[..., None] * m1
        return np.stack([x_c, m, m1, x_next], -2)

    def _coefficients(self) -> np.ndarray:
        """float64 ``[T, 3, 8]`` table indexed by (level, k); columns ``E A B C D F G H``."""
        T, sig = self.num_steps, self._desc  # sig[s]: sampling step s; sig[T] = 0
        alpha = 1 - sig
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(sig)  # log-SNR; +inf at the terminal sigma 0
        table = np.zeros((T, 3, 8))
        for s in range(T):
            level = T - 1 - s
            for k in range(3):
                # A slot cannot have more history than the levels above it; clip so every entry is finite.
                k_eff = min(k, s)
                row = table[level, k]
                if k_eff == 0:
                    row[_E] = 1.0
                else:
                    row[_A], row[_B], row[_C], row[_D] = self._corrector(sig, alpha, lam, s, order=k_eff)
                order = 1 if k_eff == 0 or s == T - 1 else 2
                row[_F], row[_G], row[_H] = self._predictor(sig, alpha, lam, s, order)
        assert np.isfinite(table).all()
        return table

    @staticmethod
    def _corrector(sig, alpha, lam, s, order):
        """UniC-bh2 at step s: ``x_c = A last + B m1 + C m2 + D m`` (diffusers multistep_uni_c_bh_update)."""
        hh = -(lam[s] - lam[s - 1])
        h_phi_1 = np.expm1(hh)
        b_h = np.expm1(hh)  # bh2
        if order == 1:
            rho = np.array([0.5])
            rk = 1.0
        else:
            rk = (lam[s - 2] - lam[s - 1]) / (-hh)
            h_phi_k = h_phi_1 / hh - 1
            b = [h_phi_k / b_h, (h_phi_k / hh - 0.5) * 2 / b_h]
            rho = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), np.array(b))
        # x_c = sig_t/sig_s0 last - alpha_t h_phi_1 m1 - alpha_t B_h (rho_0 (m2 - m1)/rk + rho_last (m - m1))
        at_bh = alpha[s] * b_h
        c_m2 = -at_bh * rho[0] / rk if order == 2 else 0.0
        c_m = -at_bh * rho[-1]
        c_m1 = -alpha[s] * h_phi_1 - c_m2 - c_m
        return sig[s] / sig[s - 1], c_m1, c_m2, c_m

    @staticmethod
    def _predictor(sig, alpha, lam, s, order):
        """UniP-bh2, step s -> s+1: ``x_next = F x_c + G m + H m1`` (diffusers multistep_uni_p_bh_update)."""
        if sig[s + 1] == 0:  # terminal step (order 1): h = inf, x_next = x0 prediction
            return 0.0, 1.0, 0.0
        hh = -(lam[s + 1] - lam[s])
        h_phi_1 = np.expm1(hh)
        b_h = np.expm1(hh)  # bh2
        # x_next = sig_t/sig_s0 x_c - alpha_t h_phi_1 m - alpha_t B_h rho_p (m1 - m)/rk, rho_p = 0.5
        c_m1 = 0.0
        if order == 2:
            rk = (lam[s - 1] - lam[s]) / (-hh)
            c_m1 = -alpha[s + 1] * b_h * 0.5 / rk
        return sig[s + 1] / sig[s], -alpha[s + 1] * h_phi_1 - c_m1, c_m1

    def init_state(
        self, capacity: int, latent_shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype
    ) -> dict[str, Tensor]:
        """Zeroed history for ``capacity`` slots, stored in ``dtype`` (float32 keeps it exact; fp16/bf16
        halves the memory but rounds the history)."""
        return {
            "history": torch.zeros((capacity, 3, *latent_shape), device=device, dtype=dtype),
            "count": torch.zeros(capacity, device=device, dtype=torch.int64),
        }

    def reset_slots(self, state: dict[str, Tensor], slots: Tensor) -> None:
        """Zero the history of ``slots [M]``: their next step is a first (order-1, uncorrected) step."""
        for name in ("history", "count"):
            state[name].index_fill_(0, slots, 0)

    def step(
        self,
        x: Tensor,
        pred: Tensor,
        levels: Tensor,
        *,
        slots: Tensor | None = None,
        state: dict[str, Tensor] | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """UniPC step of ``x [N, ...]`` with velocity ``pred [N, ...]``; updates ``state`` rows ``slots [N]``.

        fp32 math; result in ``x.dtype``; ``noise`` is ignored.
        """
        if slots is None or state is None:
            raise ValueError("FlowUniPCSolver.step needs slots= and state= (from init_state) for its history")
        cdt = compute_dtype(x.dtype)
        n = x.shape[0]
        count = state["count"].index_select(0, slots)
        history = state["history"]
        inputs = torch.cat([x.to(cdt).reshape(n, 1, -1), pred.to(cdt).reshape(n, 1, -1),
                            history.index_select(0, slots).to(cdt).view(n, 3, -1)], 1)  # [N, 5, P]
        out = torch.bmm(self._mix[levels, count].to(cdt), inputs)  # [N, 4, P]: x_c, m, m1 (the new history), x_next
        history.index_copy_(0, slots, out[:, :3].view(n, 3, *x.shape[1:]).to(history.dtype))
        state["count"].index_copy_(0, slots, (count + 1).clamp(max=2))
        return out[:, 3].view(x.shape).to(x.dtype)
