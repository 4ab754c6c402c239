"""Many independent videos through one engine run: latents packed along the channel axis.

When a model call is launch-bound (small windows on a GPU), rendering V videos as one run with V times
wider latents multiplies throughput: every call carries V videos. (Measured on the 2-core CPU with the
bundled model, which is already compute-bound there: 4.0 video frames/s unpacked, 5.1 in packs of 8,
4.5 in packs of 32, miga mode; so on a CPU packing is about bookkeeping, not speed.) The engine
needs no change: its ring holds packed latents ``[V*C, H, W]``, every solver step is elementwise with
per-slot coefficients, and keyed noise of shape ``[V*C, H, W]`` gives each video its own noise.
``PackedDenoiser`` unpacks to the model's batch axis and back.

One thing is shared: a plan's control flow. Self-reflection scores a whole (packed) latent and then
takes one decision for the run, so with reflection on, the V videos share their trigger / selection
decisions (the score is summed over videos). Render reflection studies unpacked (V = 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class PackedDenoiser:
    """``denoise(x [B, V*C, F, H, W], t [B, F], cond [B, V*S, D]) -> [B, V*C, F, H, W]``.

    Runs the wrapped per-frame denoiser once on ``[B*V, C, F, H, W]`` with video v's condition
    ``cond[:, v*S:(v+1)*S]`` (see ``pack_conditions``).
    """

    def __init__(self, denoise: Callable[[Tensor, Tensor, Tensor], Tensor], videos: int):
        if videos < 1:
            raise ValueError(f"videos must be >= 1 (got {videos})")
        self.denoise, self.videos = denoise, videos

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        b, vc, f, h, w = x.shape
        v = self.videos
        if vc % v or cond.shape[1] % v:
            raise ValueError(f"packed x channels ({vc}) and cond tokens ({cond.shape[1]}) must be multiples "
                             f"of videos={v}")
        x_v = x.reshape(b * v, vc // v, f, h, w)  # [B, V, C, ...] -> [B*V, C, ...]: video-major within a window
        t_v = t.repeat_interleave(v, dim=0)
        cond_v = cond.reshape(b * v, cond.shape[1] // v, cond.shape[2])
        return self.denoise(x_v, t_v, cond_v).reshape(b, vc, f, h, w)


def pack_conditions(conds: Sequence[Tensor]) -> Tensor:
    """Per-video conditions ``[1, S, D]`` (equal S) -> ``[1, V*S, D]``, video v at tokens ``v*S:(v+1)*S``."""
    shapes = {tuple(c.shape) for c in conds}
    if len(shapes) != 1:
        raise ValueError(f"packed conditions must share one shape [1, S, D] (got {sorted(shapes)})")
    return torch.cat(list(conds), dim=1)


def unpack_latent(latent: Tensor, videos: int) -> Tensor:
    """A packed output latent ``[V*C, H, W]`` -> ``[V, C, H, W]``."""
    return latent.unflatten(0, (videos, -1))
