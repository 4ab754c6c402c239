"""Per-slot DDIM, the FIFO-Diffusion / MIGA VideoCrafter2 variant (eps prediction).

Reproduces ``lvdm/models/samplers/ddim.py`` + ``make_ddim_timesteps(..., "uniform")`` of FIFO-Diffusion
and MIGA, which differ from diffusers' ``DDIMScheduler``:
  * DDPM timesteps ``ts = round(linspace(0, 999, T))`` (no ``+1`` offset, always contains 0 and 999);
  * ``a_prev[0] = acp[0]`` (not 1), so the step at level 0 is the identity up to round-off and the
    returned latent keeps the noise of DDPM step 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import require
from .base import Solver, compute_dtype, per_latent


def vc2_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                       beta_end: float = 0.012) -> np.ndarray:
    """float64 ``[num_train_timesteps]`` cumulative alphas of the "scaled_linear" betas of LDM / VideoCrafter2:
    training noises ``x_t = sqrt(acp[t]) x0 + sqrt(1 - acp[t]) eps`` and DDIM samples on the same table."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


class DDIMSolver(Solver):
    """DDIM over the levels ``i -> i-1`` with per-latent levels.

    Tables (float32 ``[T]`` on the device, computed in float64): ``alphas[i] = acp[ts[i]]``,
    ``alphas_prev``, ``sigmas`` (eta-scaled DDIM std) and ``timesteps`` (int64 DDPM timesteps).
    """

    prediction = "eps"

    def __init__(
        self,
        num_steps: int,
        *,
        eta: float = 1.0,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        device: torch.device | str | None = None,
    ):
        require(1 <= num_steps <= num_train_timesteps, "num_steps", f"in [1, {num_train_timesteps}]", num_steps)
        self.num_steps = num_steps
        self.eta = float(eta)
        acp = vc2_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
        ts = np.linspace(0, num_train_timesteps - 1, num_steps).round().astype(np.int64)
        a = acp[ts]
        a_prev = np.concatenate([acp[:1], acp[ts[:-1]]])
        sigma = self.eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        # x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma noise, with
        # x0 = (x - sqrt(1 - a) eps) / sqrt(a), folded into x_prev = c_x x + c_eps eps + sigma noise.
        c_x = np.sqrt(a_prev / a)
        c_eps = np.sqrt(1 - a_prev - sigma**2) - np.sqrt(a_prev * (1 - a) / a)

        def table(v: np.ndarray) -> Tensor:
            return torch.tensor(v, dtype=torch.float32, device=device)

        self.timesteps = torch.tensor(ts, dtype=torch.int64, device=device)
        self.alphas, self.alphas_prev, self.sigmas = table(a), table(a_prev), table(sigma)
        self._model_t = table(ts)
        self._sqrt_a, self._sqrt_1ma = table(np.sqrt(a)), table(np.sqrt(1 - a))
        self._c_x, self._c_eps = table(c_x), table(c_eps)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def affine_tables(self) -> dict[str, Tensor | None]:
        return {"c_x": self._c_x, "c_pred": self._c_eps, "c_noise": self.sigmas if self.eta > 0 else None}

    def model_timesteps(self, levels: Tensor) -> Tensor:
        """The integer DDPM timestep of each level, as float32 ``[N]``."""
        return self._model_t[levels]

    def add_noise(self, x: Tensor, noise: Tensor, levels: Tensor) -> Tensor:
        """``sqrt(a[i]) x + sqrt(1 - a[i]) noise`` per latent; ``x, noise [N, ...]``."""
        cdt = compute_dtype(x.dtype)
        sqrt_a, sqrt_1ma = per_latent(self._sqrt_a[levels], x), per_latent(self._sqrt_1ma[levels], x)
        return (sqrt_a * x.to(cdt) + sqrt_1ma * noise.to(cdt)).to(x.dtype)

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
        """DDIM step of ``x [N, ...]`` given eps ``pred [N, ...]``; ``noise [N, ...]`` required if eta > 0.

        ``slots`` / ``state`` are ignored (memoryless). Computed in fp32, returned in ``x.dtype``.
        """
        cdt = compute_dtype(x.dtype)
        out = per_latent(self._c_x[levels], x) * x.to(cdt) + per_latent(self._c_eps[levels], x) * pred.to(cdt)
        if self.eta > 0:
            if noise is None:
                raise ValueError(
                    f"DDIMSolver.step: noise is required when eta={self.eta} > 0 (pass a [N, ...] "
                    "standard-normal tensor drawn from your generator)"
                )
            out = out + per_latent(self.sigmas[levels], x) * noise.to(cdt)
        return out.to(x.dtype)
