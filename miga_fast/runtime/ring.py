"""The preallocated device store the engine runs plans over."""

from __future__ import annotations

import torch
from torch import Tensor

from ..solvers.base import Solver


class LatentRing:
    """`capacity` latent slots [capacity, C, H, W] + per-slot solver state + window gather buffers.

    Sized once; windows are gathered with `index_select(..., out=)` into buffers kept per window
    shape, so after the first call of each shape nothing is allocated for latents again.
    """

    def __init__(self, capacity: int, latent_shape: tuple[int, ...], solver: Solver,
                 device: torch.device, dtype: torch.dtype):
        self.capacity, self.latent_shape = capacity, tuple(latent_shape)
        self.latents = torch.zeros((capacity, *latent_shape), device=device, dtype=dtype)
        self.state = solver.init_state(capacity, self.latent_shape, device, dtype)
        self._gather: dict[int, Tensor] = {}

    def gather(self, slots: Tensor) -> Tensor:
        """Copy the latents of `slots` [M] into a reusable buffer [M, C, H, W]."""
        n = slots.shape[0]
        buf = self._gather.get(n)
        if buf is None:
            buf = self._gather[n] = torch.empty((n, *self.latent_shape), device=self.latents.device,
                                                dtype=self.latents.dtype)
        return torch.index_select(self.latents, 0, slots, out=buf)

    def pointers(self) -> dict[str, int]:
        """Storage addresses of every buffer (stable after warm-up: asserted by tests)."""
        ptrs = {"latents": self.latents.data_ptr()}
        ptrs.update({f"state.{k}": v.data_ptr() for k, v in self.state.items()})
        ptrs.update({f"gather.{n}": b.data_ptr() for n, b in self._gather.items()})
        return ptrs
