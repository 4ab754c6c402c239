"""Keyed Gaussian noise: the value of every draw is a pure function of its key.

The engine never consumes a shared stateful generator: each latent's noise is keyed by
(seed, stream, serial, level). Two executions of one plan therefore see identical noise whatever
their batching or window order, and a naive reference implementation can reproduce an engine run
bit for bit. Two methods, same keys:

- "generator" (CPU default): one torch.Generator seeded with the key per latent; fast on a CPU.
- "hash" (CUDA default): computed on the device from an integer hash of the key and the element
  index (Box-Muller over two hashed uniforms): no RNG state, no host loop per latent, so it can
  live inside a captured CUDA graph. ~200x slower than "generator" on a CPU.

The two methods give different (equally valid) noise: a video is reproducible for a given seed,
method and device kind.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) held in int64, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash_int(x: int) -> int:
    return int(hash32(torch.tensor([x & _MASK], dtype=torch.int64))[0])


class CounterNoise:
    """Deterministic N(0, 1) draws keyed by (stream, serial, level), for a given seed."""

    def __init__(self, seed: int, device: torch.device | str = "cpu", method: str | None = None):
        self.device = torch.device(device)
        self.method = method or ("hash" if self.device.type == "cuda" else "generator")
        if self.method not in ("generator", "hash"):
            raise ValueError(f"method must be 'generator' or 'hash' (got {method!r})")
        self._offsets: dict[int, Tensor] = {}
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Draw the noise of another video: every later draw is keyed by `seed` (nothing reallocated)."""
        self.seed = int(seed)
        self._seed_key = _hash_int(self.seed ^ 0x9E3779B9)

    def keys(self, stream: int, serials, levels) -> list[int]:
        """Host-side 32-bit keys for a list of (serial, level) in one stream."""
        return [(self._seed_key * 0x01000193 ^ (stream * 0x85EBCA6B) ^ (s * 0x27D4EB2F) ^ ((lv + 7) * 0x165667B1))
                & _MASK for s, lv in zip(serials, levels, strict=True)]

    def _element_offsets(self, numel: int) -> Tensor:
        off = self._offsets.get(numel)
        if off is None:
            off = self._offsets[numel] = torch.arange(numel, dtype=torch.int64, device=self.device) * 2
        return off

    def gaussian(self, keys: Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """``keys`` int64 [N] -> N(0,1) samples [N, *shape] (Box-Muller over two hashed uniforms)."""
        numel = math.prod(shape)
        base = hash32(keys.to(self.device, torch.int64).unsqueeze(1) & _MASK)
        counters = (base + self._element_offsets(numel)) & _MASK
        u1 = (hash32(counters).to(torch.float64) + 1.0) / 4294967296.0  # (0, 1]
        u2 = hash32((counters + 1) & _MASK).to(torch.float64) / 4294967296.0
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return z.to(dtype).view(keys.shape[0], *shape)

    def draw(self, stream: int, serials, levels, shape, dtype=torch.float32) -> Tensor:
        """Noise for latents (serial, level) of `stream`: [len(serials), *shape]."""
        keys = self.keys(stream, serials, levels)
        if self.method == "hash":
            return self.gaussian(torch.tensor(keys, dtype=torch.int64), tuple(shape), dtype)
        out = torch.empty((len(keys), *shape), dtype=torch.float32, device=self.device)
        gen = torch.Generator(self.device)
        for i, key in enumerate(keys):
            gen.manual_seed(key)
            torch.randn(tuple(shape), generator=gen, out=out[i])
        return out.to(dtype)
