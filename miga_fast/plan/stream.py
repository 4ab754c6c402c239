"""miga-stream: MIGA with a bounded-memory, streaming stage 2 (ours; beyond the paper).

For both families. Stage 1 is the family's official one (`miga.plan_stage1`). The official stage 2
holds every output latent until the end, so it is not infinite. Here popped latents wait in a
pending list; as soon as a chunk is available it runs the whole stage 2 + refine on its own:

- chunk: the first chunk is min(f0, N) latents with no context; every later chunk is
  c = f0 - ctx new latents (fewer at the very end), and the window is completed to f0 with the
  last `ctx` finished latents as read-only left context;
- each context latent enters a call re-noised from its finished value to the chunk's level
  (fresh, deterministic noise per level), so every window sits at ONE level: the training
  condition stage 2 exists for;
- the chunk follows the family's official stage-2 level path (`miga.stage2_passes`; VC2: e = end_level-1
  unified steps, levels e..1, re-noise to refine_level, refine_level more steps; Wan: see miga_wan.py),
  then is emitted; its last ctx latents become the next context. Nothing is dropped: N output latents
  need ceil(N/L) popped blocks.

Invariants (tested): windows never exceed f0; all levels in a window are equal; latents are
emitted in serial order; live latents <= T*L + rollouts + f0 + L + ctx for any N.
Latency: a latent is emitted at most one chunk (c latents) after it leaves stage 1.
"""

from __future__ import annotations

import math
from collections.abc import Generator

from .book import Book, Latent
from .config import PlanConfig, check_latents
from .events import Emit, Event
from .miga import plan_stage1, stage1_capacity, stage2_path


def stream_capacity(cfg: PlanConfig) -> int:
    """Independent of N: stage-1 ring + pending (< f0 + L) + context."""
    return stage1_capacity(cfg) + cfg.window + cfg.zigzag + cfg.context_len


def _finish_chunk(book: Book, cfg: PlanConfig, chunk: list[Latent], context: list[Latent]):
    """Stage 2 + refine of one chunk, one f0 window per level; the context is re-noised per call."""
    ctx = len(context)

    def step(phase: str, it: int, stream: int):
        inputs = context + chunk
        call = book.call(phase, inputs, range(ctx, ctx + len(chunk)), levels=[chunk[0].level] * len(inputs),
                         noise_stream=stream, renoised=tuple(range(ctx)))
        yield call
        book.advance(call, inputs)

    yield from stage2_path(cfg, chunk, step)


def plan_miga_stream(cfg: PlanConfig, num_latents: int) -> Generator[Event, object, None]:
    """Events of a miga-stream run (either family) emitting `num_latents` latents with bounded live latents."""
    check_latents(cfg, num_latents)
    book = Book(stream_capacity(cfg))
    f0, ctx_len = cfg.window, cfg.context_len
    pending: list[Latent] = []
    context: list[Latent] = []
    emitted = 0

    def run(chunk: list[Latent]):
        nonlocal context, emitted
        ctx = context[len(context) - min(len(context), f0 - len(chunk)) :] if context else []
        yield from _finish_chunk(book, cfg, chunk, ctx)
        for lat in chunk:
            yield Emit(lat.serial, lat.slot, keep=emitted < num_latents)
            emitted += 1
        keep = (context + chunk)[-ctx_len:]
        book.release([x for x in context + chunk if x not in keep])
        context = keep

    def sink(block: list[Latent]):
        pending.extend(block)
        while pending and len(pending) >= (size := cfg.stream_chunk if context else min(f0, num_latents)):
            chunk, pending[:size] = pending[:size], []
            yield from run(chunk)

    yield from plan_stage1(cfg, math.ceil(num_latents / cfg.zigzag), book, sink)
    while pending:
        chunk, pending[: cfg.stream_chunk] = pending[: cfg.stream_chunk], []
        yield from run(chunk)
    book.release(context)
