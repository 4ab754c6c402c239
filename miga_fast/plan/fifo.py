"""FIFO-Diffusion (diagonal denoising), reference-exact to the official VideoCrafter2 sampler.

Queue: P = f0/2 look-ahead padding slots (0 without look-ahead) then T diagonal slots; queue
position P+i always holds the latent at level i. Initial queue: padding = base frame 0 noised to
level 0; position P+i = base frame max(0, i-(T-f0)) noised to level i. One iteration runs 2n
half-overlapping windows (look-ahead; each writes its noisier half) or n disjoint windows, tail
first as the official loop does; no window reads a latent another window of the same iteration
writes, so they form one batchable group. Then position P (level 0, after its identity step) is
emitted, the queue shifts by one and a fresh N(0,1) latent enters the tail. The first T-f0
emitted latents are warm-up (the official script drops them): they are emitted with keep=False.
"""

from __future__ import annotations

from collections.abc import Generator

from .book import Book
from .config import PlanConfig, check_latents
from .events import Emit, Event, IterationEnd


def fifo_capacity(cfg: PlanConfig) -> int:
    return cfg.padding + cfg.num_steps


def plan_fifo(cfg: PlanConfig, num_latents: int) -> Generator[Event, object, None]:
    """Events of a FIFO run that emits `num_latents` kept latents (plus T-f0 warm-up ones)."""
    check_latents(cfg, num_latents)
    T, f0, P = cfg.num_steps, cfg.window, cfg.padding
    book = Book(fifo_capacity(cfg))
    queue = []
    for _ in range(P):
        lat, ev = book.new(0, "base", 0)
        queue.append(lat)
        yield ev
    for i in range(T):
        lat, ev = book.new(i, "base", max(0, i - (T - f0)))
        queue.append(lat)
        yield ev

    level_of = [0] * P + list(range(T))  # the diagonal: levels are fixed per queue position
    if cfg.lookahead:
        starts = [rank * (f0 // 2) for rank in reversed(range(2 * (T // f0)))]
        written = range(f0 // 2, f0)
    else:
        starts = [rank * f0 for rank in reversed(range(T // f0))]
        written = range(f0)
    warmup = T - f0
    for it in range(num_latents + warmup):
        for s in starts:
            inputs = queue[s : s + f0]
            yield book.call("fifo", inputs, written, levels=level_of[s : s + f0], group=it)
        yield IterationEnd("fifo", tuple(x.serial for x in queue))
        head = queue[P]
        yield Emit(head.serial, head.slot, keep=it >= warmup)
        book.release([queue.pop(0)])
        lat, ev = book.new(T - 1, "noise")
        queue.append(lat)
        yield ev
