"""MIGA, reference-exact to the official Wan2.1 sampler (XiaokunFeng/MIGA, `wan_based/wan/text2video.py`,
`generate_by_miga`), re-derived as index math; and wan-miga-stream, its stage 1 with our streaming stage 2.

Levels: the official code counts s = 0 (noisiest) .. T-1; here i = T-1-s, as in the rest of the
planner. The structure is VC2's (miga.py): the f0 base latents noised into blocks at levels
T-f0/L-1 .. T-2, a fill phase that appends and denoises one block per iteration, a stage-1 loop that
pops finished head blocks, then stage 2 and refine over all popped latents. Official behaviour that
differs from VC2, kept on purpose because it changes the trace or the numerics and we want outputs
comparable with the official code (preset values: T=54, f0=21, L=7, m=4, stride 10):

- Far guidance is the literal start - (3 + j*L) (VC2: L//2 + j*L); equal for L = 7. The config
  rejects L < 3, where the official index goes negative and silently wraps to the queue tail.
- Fill windows read guidance latents already stepped in the same iteration (Gauss-Seidel, as VC2).
  Stage-1 windows read the queue as it was before the iteration (Jacobi: the official code writes
  step results to its per-latent dict and rebuilds its lists after the last window), so the calls
  of one stage-1 iteration share a `group`: the engine may batch them and, by the group contract,
  every call reads the pre-group values.
- Every fresh latent (fill, stage-1 append, rollout) is the last base latent noised to level T-1.
- Stage 1 appends a block only once the pop flag is set, and only while the tail is at level >= T-2.
  When the fill phase runs all of its n iterations (n <= 39 with the preset) nothing is ever appended
  and the queue shrinks by a block per pop; otherwise it keeps T - end_level blocks.
- Pop: the flag is set when the head first reaches end_level; every later iteration pops the head
  block (stepped at end_level, it leaves at end_level-1). The official code then drops the last L
  entries of its level list instead of shifting it, which is right only for a uniform zigzag, i.e.
  when L divides f0 (validated for every family; the official levels drift otherwise). We track true
  levels; the tests check that they equal the official labels.
- Self-reflection (fill phase only; YAML `involve_resample: true`): the judged block is the 10th from
  the tail, which during the fill (tail always at T-2) is the block at judged_level = T-11; r = 2 guide
  blocks, K = 3 rollouts of 10 iterations (their partition is right only when the guide plus one
  block fill one window, (r+1)L = f0: validated), threshold 0.01 (YAML), per-frame score "frame"
  (runtime.scores, bf16 as under the official autocast). The rollout rules are VC2's (miga._reflect,
  reused); rollout calls whose writes are all skipped are not emitted (they cannot change a latent).
- Stage 2 labels the popped latents (truly at end_level-1) as end_level, an official off-by-one (its
  first step treats them as one level noisier), and runs end_level iterations at levels end_level..1
  with a fresh solver history (ResetHistory); it ends one step short of clean. Refine re-noises that
  result to refine_level (9) and steps refine_level..0, so the output reaches sigma 0.
- The last f0 stage-2 latents are dropped (literal 21): N_out = n*L - f0 for long_iter_nums n. We map
  `--latents N` to the smallest n with N_out >= N and emit the surplus with keep=False. Every N >= 1
  gives n >= 4; the official code crashes only for n <= 3 (short stage-2 windows, empty output).

wan-miga-stream (ours): the same stage 1, then stream.py's bounded-memory stage 2 (chunks of f0 - ctx
new latents, the last ctx finished latents re-noised per call as read-only context), where every
chunk takes the official Wan level path above (reset, end_level..1, re-noise, refine_level..0).
Nothing is dropped, so N output latents need ceil(N/L) popped blocks.

Not reproduced, as it has no effect on the schedule: the unseeded global CUDA RNG and the unused
seed_g draw (our noise is keyed per latent), rollout calls without write-back, and the dead
`prev_sample is None` branch. Model-side quirks (exactly 21-frame windows, the output head's adaLN
using frame 0's timestep, bf16 autocast) belong to the model and engine, not to the plan.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Generator, Iterator, Sequence

from .config import WAN_GUIDANCE_CENTRE, PlanConfig, check_latents
from .events import (
    NOISE_STEP_REFINE,
    NOISE_STEP_STAGE2,
    Emit,
    Event,
    IterationEnd,
    ReflectCheck,
    ReflectSelect,
    Renoise,
    ResetHistory,
)
from .miga import PopSink, _reflect, stage1_capacity
from .queue import Book, Latent
from .stream import stream_capacity
from .windows import dynamic_chunks, fill_chunks, guidance_positions

WAN_SCORE = "frame"  # runtime.scores: per-frame mean pairwise cosine (official Wan `adjust_judge`)


def official_iterations(cfg: PlanConfig, num_latents: int) -> int:
    """Official `long_iter_nums` n for N output latents: the smallest n with n*L - f0 >= N."""
    return math.ceil((num_latents + cfg.window) / cfg.zigzag)


def wan_miga_capacity(cfg: PlanConfig, num_latents: int) -> int:
    """Offline: the stage-1 ring plus every popped latent, kept until stage 2 (official)."""
    return stage1_capacity(cfg) + official_iterations(cfg, num_latents) * cfg.zigzag


def _serials(latents: Sequence[Latent]) -> tuple[int, ...]:
    return tuple(x.serial for x in latents)


def _slots(latents: Sequence[Latent]) -> tuple[int, ...]:
    return tuple(x.slot for x in latents)


def _window(queue: list[Latent], start: int, count: int, cfg: PlanConfig):
    """Inputs and written positions of stage-1 chunk (start, count): the f0-m queue latents with the
    guidance latents prepended, or the plain f0 window [start, start+f0) at the head."""
    guide = guidance_positions(start, cfg.guidance_frames, cfg.zigzag, WAN_GUIDANCE_CENTRE)
    if guide is None:
        return queue[start : start + cfg.window], range(count)
    inputs = [queue[p] for p in guide] + queue[start : start + cfg.stage1_window]
    return inputs, range(len(guide), len(guide) + count)


def _reflect_wan(book: Book, cfg: PlanConfig, queue: list[Latent]) -> Generator[Event, object, list[Latent]]:
    """miga._reflect (the rollout rules coincide) with its check and selection asking for the Wan score."""
    inner = _reflect(book, cfg, queue)
    reply = None
    while True:
        try:
            event = inner.send(reply)
        except StopIteration as done:
            return done.value
        if isinstance(event, ReflectCheck | ReflectSelect):
            event = dataclasses.replace(event, score=WAN_SCORE)
        reply = yield event


def plan_stage1_wan(cfg: PlanConfig, blocks: int, book: Book, sink: PopSink,
                    groups: Iterator[int]) -> Generator[Event, object, None]:
    """Init, fill phase and stage-1 loop; pops `blocks` head blocks (official long_iter_nums) into `sink`."""
    T, L, f0, S, end = cfg.num_steps, cfg.zigzag, cfg.window, cfg.stride, cfg.end_level
    queue: list[Latent] = []

    def append():
        for _ in range(L):
            lat, ev = book.new(T - 1, "base", f0 - 1)
            queue.append(lat)
            yield ev

    first = T - f0 // L - 1
    for j in range(f0):
        lat, ev = book.new(first + j // L, "base", j)
        queue.append(lat)
        yield ev

    for _ in range(min(blocks, T - f0 // L)):
        yield from append()
        if len(queue) == T * L or queue[0].level <= end + 1:
            break  # before denoising: the appended block stays at T-1
        for start, count in fill_chunks(len(queue), cfg.stage1_window, S):
            inputs, writes = _window(queue, start, count, cfg)
            call = book.call("fill", inputs, writes)
            yield call
            book.advance(call, inputs)  # Gauss-Seidel: later windows read this step's results
        yield IterationEnd("fill", _serials(queue))
        if cfg.reflection and queue[0].level < cfg.judged_level - cfg.reflect_blocks:
            queue = yield from _reflect_wan(book, cfg, queue)

    popped, popping, it = 0, False, -1
    while popped < blocks:
        it += 1
        head, group, stepped = queue[0].level, next(groups), []
        for start, count in dynamic_chunks(len(queue), cfg.stage1_window, S, it):
            inputs, writes = _window(queue, start, count, cfg)
            call = book.call("stage1", inputs, writes, group=group)
            yield call
            stepped.append((call, inputs))
        for call, inputs in stepped:  # Jacobi: levels move once the whole iteration has run
            book.advance(call, inputs)
        yield IterationEnd("stage1", _serials(queue))
        if popping and head <= end:
            block, queue[:L] = queue[:L], []
            popped += 1
            yield from sink(block)
        elif queue[0].level <= end:
            popping = True
        if popping and queue[-1].level >= T - 2:
            yield from append()
    book.release(queue)


def _unified(book: Book, cfg: PlanConfig, latents: list[Latent], phase: str, iterations: int, stream: int,
             groups: Iterator[int]) -> Generator[Event, object, None]:
    """Official stage-2 / refine iterations: f0 windows with the dynamic offset, one group per iteration
    (official Jacobi update; no window reads another's writes, so batching is exact)."""
    for it in range(iterations):
        group, stepped = next(groups), []
        for start, count in dynamic_chunks(len(latents), cfg.window, cfg.stride, it):
            inputs = latents[start : start + cfg.window]
            call = book.call(phase, inputs, range(count), noise_stream=stream, group=group)
            yield call
            stepped.append((call, inputs))
        for call, inputs in stepped:
            book.advance(call, inputs)


def plan_wan_miga(cfg: PlanConfig, num_latents: int) -> Generator[Event, object, None]:
    """Events of an offline (official) Wan MIGA run emitting `num_latents` latents."""
    check_latents(cfg, num_latents)
    book = Book(wan_miga_capacity(cfg, num_latents))
    groups = itertools.count()
    saved: list[Latent] = []

    def keep(block):
        saved.extend(block)
        return iter(())

    yield from plan_stage1_wan(cfg, official_iterations(cfg, num_latents), book, keep, groups)
    yield ResetHistory(_serials(saved), _slots(saved))
    for lat in saved:
        lat.level = cfg.end_level  # official off-by-one label: they are at end_level - 1
    yield from _unified(book, cfg, saved, "stage2", cfg.end_level, NOISE_STEP_STAGE2, groups)
    for lat in saved:
        lat.level = cfg.refine_level
    yield Renoise(_serials(saved), _slots(saved), cfg.refine_level)
    yield from _unified(book, cfg, saved, "refine", cfg.refine_level + 1, NOISE_STEP_REFINE, groups)
    for i, lat in enumerate(saved):  # the official output drops the last f0; N <= n*L - f0
        yield Emit(lat.serial, lat.slot, keep=i < num_latents)
    book.release(saved)


def _finish_chunk(book: Book, cfg: PlanConfig, chunk: list[Latent], context: list[Latent]):
    """Stage 2 + refine of one miga-stream chunk with the official Wan level path: reset history,
    levels end_level..1 (official label), re-noise, refine_level..0; context re-noised per call."""
    ctx = len(context)
    yield ResetHistory(_serials(chunk), _slots(chunk))
    passes = (("stage2", cfg.end_level, 1, NOISE_STEP_STAGE2), ("refine", cfg.refine_level, 0, NOISE_STEP_REFINE))
    for phase, top, bottom, stream in passes:
        for lat in chunk:
            lat.level = top
        if phase == "refine":
            yield Renoise(_serials(chunk), _slots(chunk), top)
        for level in range(top, bottom - 1, -1):
            inputs = context + chunk
            call = book.call(phase, inputs, range(ctx, ctx + len(chunk)), levels=[level] * len(inputs),
                             noise_stream=stream, renoised=tuple(range(ctx)))
            yield call
            book.advance(call, inputs)


def plan_wan_miga_stream(cfg: PlanConfig, num_latents: int) -> Generator[Event, object, None]:
    """Wan stage 1 (official) with the bounded-memory chunked stage 2 of stream.py; nothing is dropped,
    so N output latents need ceil(N/L) popped blocks."""
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

    yield from plan_stage1_wan(cfg, math.ceil(num_latents / cfg.zigzag), book, sink, itertools.count())
    while pending:
        chunk, pending[: cfg.stream_chunk] = pending[: cfg.stream_chunk], []
        yield from run(chunk)
    book.release(context)
