"""Window partitions of the official MIGA sampler, as (start, count) chunks over a queue of n latents.

A chunk covers queue positions [start, start+count); its model window starts at `start` and is
`width` latents long, so positions past `count` are read-only look-ahead context. The chunks of
one pass partition [0, n) exactly.
"""

from __future__ import annotations


def dynamic_chunks(n: int, width: int, stride: int, iteration: int) -> list[tuple[int, int]]:
    """Stage-1 / stage-2 / refine partition with the dynamic offset `iteration % stride`.

    Official rule: a head chunk of `iteration % stride` latents (dropped when the rest would be
    shorter than one window), then chunks of `stride`, then the remainder, then the last `width`
    latents, written in full.
    """
    assert n >= width, (n, width)
    offset = iteration % stride
    if n - offset < width:
        offset = 0
    middle, remainder = divmod(n - offset - width, stride)
    chunks = [(0, offset)] if offset else []
    chunks += [(offset + c * stride, stride) for c in range(middle)]
    if remainder:
        chunks.append((n - width - remainder, remainder))
    chunks.append((n - width, width))
    return chunks


def fill_chunks(n: int, width: int, stride: int) -> list[tuple[int, int]]:
    """Fill-phase partition (no dynamic offset): remainder first, then strides, then the last window."""
    assert n >= width, (n, width)
    middle, remainder = divmod(n - width, stride)
    chunks = [(0, remainder)] if remainder else []
    chunks += [(remainder + c * stride, stride) for c in range(middle)]
    chunks.append((n - width, width))
    return chunks


def rollout_chunks(n: int, width: int, stride: int) -> list[tuple[int, int]]:
    """Self-reflection rollout partition: like `fill_chunks`, but a list no longer than one window
    is a single chunk covering all of it."""
    if n <= width:
        return [(0, n)]
    return fill_chunks(n, width, stride)


def guidance_positions(start: int, guidance: int, zigzag: int, centre: int | None = None) -> list[int] | None:
    """Queue positions of the m guidance latents prepended to a stage-1 window starting at `start`.

    Official rules: far from the head (start >= m*L) take one latent per block's worth of latents
    before the window, start - (centre + j*L) for j = m-1..0 (VC2: centre = L//2, the middle one;
    Wan: the literal 3 whatever L); nearer (m <= start < m*L) spread them evenly,
    start - (j+1)*(start//m); at the head (start < m) there is no room: return None, and the caller
    uses a plain f0 window [start, start+f0) instead.
    """
    if guidance == 0:
        return []
    if start < guidance:
        return None
    if start >= guidance * zigzag:
        centre = zigzag // 2 if centre is None else centre
        return [start - (centre + j * zigzag) for j in reversed(range(guidance))]
    spread = start // guidance
    return [start - (j + 1) * spread for j in reversed(range(guidance))]
