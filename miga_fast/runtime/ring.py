"""The preallocated device store the engine runs plans over."""

from __future__ import annotations

import torch

from ..solvers.base import Solver


class LatentRing:
    """`capacity` latent slots [capacity, C, H, W] + per-slot solver state, sized once and kept across videos."""

    def __init__(self, capacity: int, latent_shape: tuple[int, ...], solver: Solver,
                 device: torch.device, dtype: torch.dtype):
        self.capacity, self.latent_shape = capacity, tuple(latent_shape)
        self.latents = torch.zeros((capacity, *latent_shape), device=device, dtype=dtype)
        self.state = solver.init_state(capacity, self.latent_shape, device, dtype)

    def pointers(self) -> dict[str, int]:
        """Storage addresses of every buffer (stable after warm-up: asserted by tests)."""
        ptrs = {"latents": self.latents.data_ptr()}
        ptrs.update({f"state.{k}": v.data_ptr() for k, v in self.state.items()})
        return ptrs
