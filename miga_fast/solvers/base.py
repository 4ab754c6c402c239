"""Interface shared by the per-slot solvers of the FIFO / MIGA queue engine.

Every latent in a model window sits at its own noise level, so a solver step takes a window of N
latents together with one level index per latent and updates all of them in one vectorised call.

Conventions:
  * level ``i`` in ``[0, T)``; ``T - 1`` is the noisiest. A step at level ``i`` moves a latent to
    level ``i - 1``; the step at level 0 produces the final output ("level -1").
  * ``x, pred, noise: [N, ...]`` (e.g. ``[N, C, H, W]``), ``levels: int64 [N]`` on the same device.
  * Tables live on the device and are indexed with ``levels``; the hot path never syncs with the
    host, never branches on tensor values and keeps shapes fixed, so ``step`` can be compiled with
    ``torch.compile(fullgraph=True)`` and captured in a CUDA graph.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor


def per_latent(values: Tensor, like: Tensor) -> Tensor:
    """View ``values [N]`` as ``[N, 1, ..., 1]`` so it broadcasts against ``like [N, ...]``."""
    return values.view(values.shape[0], *([1] * (like.dim() - 1)))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Solver arithmetic runs in at least fp32: fp16/bf16 round-off would compound over the steps."""
    return torch.promote_types(dtype, torch.float32)


class Solver(abc.ABC):
    """Abstract per-slot solver.

    Attributes:
        num_steps: T, the number of noise levels.
        prediction: what the denoiser predicts, ``"eps"`` or ``"flow"``.
    """

    num_steps: int
    prediction: str

    @abc.abstractmethod
    def model_timesteps(self, levels: Tensor) -> Tensor:
        """Timestep value to feed the denoiser for each latent: ``levels [N]`` -> float32 ``[N]``."""

    @abc.abstractmethod
    def add_noise(self, x: Tensor, noise: Tensor, levels: Tensor) -> Tensor:
        """Forward-noise clean ``x [N, ...]`` to ``levels [N]`` with ``noise [N, ...]``."""

    @abc.abstractmethod
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
        """One solver step for every latent: ``x [N, ...]`` at ``levels [N]`` -> new latents ``[N, ...]``.

        ``pred [N, ...]`` is the denoiser output for ``x``. Multistep solvers read and update, in place,
        the rows ``slots [N]`` (distinct ring-slot ids) of ``state``; ``noise [N, ...]`` is only used by
        stochastic solvers. The result has the dtype of ``x``.
        """

    @property
    def stochastic(self) -> bool:
        """True when ``step`` needs a ``noise`` input (the engine then draws keyed noise for every step)."""
        return False

    def affine_tables(self) -> dict[str, Tensor | None] | None:
        """Tables of a memoryless affine step ``c_x[i] x + c_pred[i] pred + c_noise[i] noise`` (float32 ``[T]``;
        ``c_x`` / ``c_noise`` None for 1 / no noise), as ``ops.solver_update`` takes them; None for a solver
        with per-slot history, which must step through ``step``."""
        return None

    def init_state(
        self, capacity: int, latent_shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype
    ) -> dict[str, Tensor]:
        """Preallocated per-slot state for a ring of ``capacity`` slots (empty: memoryless solver)."""
        return {}

    def reset_slots(self, state: dict[str, Tensor], slots: Tensor) -> None:  # noqa: B027 (no-op by default)
        """Forget the history of ``slots [M]`` in place (a latent enters the queue, MIGA stage 2)."""

    def check_levels(self, levels: Tensor) -> None:
        """Debug-only validation of ``levels`` (syncs with the host, keep it off the hot path)."""
        if levels.dtype != torch.int64:
            raise ValueError(f"levels must be an int64 tensor (got dtype={levels.dtype})")
        if levels.numel() and (int(levels.min()) < 0 or int(levels.max()) >= self.num_steps):
            raise ValueError(
                f"levels must be in [0, num_steps={self.num_steps}) "
                f"(got min={int(levels.min())}, max={int(levels.max())})"
            )

    def to(self, device: torch.device | str) -> Solver:
        """Move every precomputed table to ``device`` (in place); returns ``self``."""
        for name, value in list(vars(self).items()):
            if isinstance(value, Tensor):
                setattr(self, name, value.to(device))
        return self
