"""MIGA, reference-exact to the official VideoCrafter2 sampler (XiaokunFeng/MIGA,
`videocraft_based/scripts/evaluation/funcs.py`), re-derived as index math.

Stage 1 (zigzag queue). Queue position p (0 = head) holds a latent at level head + p//L. The queue
starts as the f0 base-clip latents noised into blocks at levels T-f0/L-1 .. T-2. A fill phase
then appends one block per iteration and denoises; a main loop pops the head block once it is
done and appends a fresh block at the tail. Every window is f0-m queue latents with the m
guidance latents prepended (`windows.guidance_positions`); windows run head to tail and in order,
so guidance reads latents already updated in the same iteration.

Stage 2 (offline, official): all N popped latents at one level e = end_level-1 take e unified
steps in f0 windows (dynamic offset, no guidance); then the refine pass re-noises all of them to
`refine_level` and takes `refine_level` more unified steps.

Official quirks kept on purpose (each changes the trace or the noise; we reproduce them so our
outputs can be compared with the official code, and document them here):
- Fill-phase appended latents are the base clip's LAST latent noised to level T-1, not pure
  noise; main-loop appends are pure N(0,1). Rollout appends are again the noised last base latent.
- The fill phase has no dynamic offset (`windows.fill_chunks`); the main loop has one.
- The fill phase runs at most min(ceil(N/L), T - f0/L) iterations and stops, before denoising,
  when the queue holds T*L latents or the head level is <= end_level+1.
- Popping starts one iteration after the head first reaches end_level (a flag is set instead of
  popping), so blocks leave stage 1 at level end_level-1 = 9 and stage 2 relabels them at that
  level and runs end_level-1 = 9 steps (levels 9..1). The level-0 step (a DDIM identity) is never
  run in MIGA.
- Self-reflection (VC2) is checked only during the fill phase, once the head is below
  judged_level - r; the trigger threshold is the function default 0.001 (the YAML's
  `resample_threshold` is not passed through). Calls whose outputs are all discarded (rollout
  windows that only cover the frozen guide) are not emitted: they cannot change any latent.
- Stage 2 needs N >= f0 (its windows would index before the list start otherwise): we reject
  smaller N with a clear error in mode 'miga' (`config.check_latents`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

from .config import PlanConfig, check_latents
from .events import (
    NOISE_STEP_REFINE,
    NOISE_STEP_STAGE2,
    Emit,
    Event,
    IterationEnd,
    ReflectCheck,
    ReflectSelect,
    Renoise,
)
from .queue import Book, Latent
from .windows import dynamic_chunks, fill_chunks, guidance_positions, rollout_chunks

PopSink = Callable[[list[Latent]], Generator[Event, object, None]]


def rollout_blocks(cfg: PlanConfig) -> int:
    """Blocks a self-reflection rollout creates: judged_level .. T-2."""
    return cfg.num_steps - cfg.judged_level - 1


def stage1_capacity(cfg: PlanConfig) -> int:
    """Ring slots stage 1 can hold at once: the full queue plus all K rollouts of one check."""
    rollouts = cfg.candidates * rollout_blocks(cfg) * cfg.zigzag if cfg.reflection else 0
    return cfg.num_steps * cfg.zigzag + rollouts


def miga_capacity(cfg: PlanConfig, num_latents: int) -> int:
    """Offline MIGA keeps every output latent until stage 2: capacity grows with N (official)."""
    return stage1_capacity(cfg) + math.ceil(num_latents / cfg.zigzag) * cfg.zigzag


def _stage1_call(book: Book, phase: str, queue: list[Latent], start: int, count: int, cfg: PlanConfig):
    """The model call for chunk (start, count): window [start, start+f0-m) with guidance, or the
    plain f0 window [start, start+f0) at the head; writes the chunk's `count` latents."""
    guide = guidance_positions(start, cfg.guidance_frames, cfg.zigzag)
    if guide is None:
        inputs = queue[start : start + cfg.window]
        writes = range(count)
    else:
        inputs = [queue[p] for p in guide] + queue[start : start + cfg.stage1_window]
        writes = range(len(guide), len(guide) + count)
    return book.call(phase, inputs, writes), inputs


def _reflect(book: Book, cfg: PlanConfig, queue: list[Latent]) -> Generator[Event, object, list[Latent]]:
    """Official self-reflection on the judged block; returns the (possibly rebuilt) queue."""
    T, L, r, f0 = cfg.num_steps, cfg.zigzag, cfg.reflect_blocks, cfg.window
    judged = cfg.judged_level - queue[0].level  # block index of the judged block
    guide = queue[(judged - r) * L : judged * L]
    triggered = yield ReflectCheck(tuple(x.slot for x in queue[judged * L : (judged + 1) * L]),
                                   tuple(x.slot for x in guide), cfg.reflect_threshold)
    if not triggered:
        return queue
    candidates = []
    for k in range(cfg.candidates):
        rollout = list(guide)  # frozen: read-only in every rollout window
        for _ in range(rollout_blocks(cfg)):
            for _ in range(L):
                lat, ev = book.new(T - 1, "base", f0 - 1)
                rollout.append(lat)
                yield ev
            for start, count in rollout_chunks(len(rollout), f0, cfg.stride):
                inputs = rollout[start : start + f0]
                writes = [p for p in range(count) if start + p >= r * L]
                if writes:
                    call = book.call("rollout", inputs, writes, candidate=k)
                    yield call
                    book.advance(call, inputs)
        candidates.append(rollout[r * L :])
    accepted = yield ReflectSelect(tuple(tuple(x.slot for x in c[:L]) for c in candidates),
                                   tuple(x.slot for x in guide))
    for k, cand in enumerate(candidates):
        if k != accepted:
            book.release(cand)
    if accepted is None:
        return queue
    book.release(queue[judged * L :])
    return queue[: judged * L] + candidates[accepted]


def plan_stage1(
    cfg: PlanConfig, num_latents: int, book: Book, sink: PopSink
) -> Generator[Event, object, None]:
    """Init, fill phase and main loop of stage 1; each popped block is handed to `sink`."""
    T, L, f0, S, end = cfg.num_steps, cfg.zigzag, cfg.window, cfg.stride, cfg.end_level
    blocks = math.ceil(num_latents / L)
    queue: list[Latent] = []

    def append(level: int, source: str, base_index: int = -1):
        for _ in range(L):
            lat, ev = book.new(level, source, base_index)
            queue.append(lat)
            yield ev

    def run_pass(phase: str, chunks):
        for start, count in chunks:
            call, inputs = _stage1_call(book, phase, queue, start, count, cfg)
            yield call
            book.advance(call, inputs)
        yield IterationEnd(phase, tuple(x.serial for x in queue))

    first = T - f0 // L - 1
    for j in range(f0):
        lat, ev = book.new(first + j // L, "base", j)
        queue.append(lat)
        yield ev

    for _ in range(min(blocks, T - f0 // L)):
        yield from append(T - 1, "base", f0 - 1)
        if len(queue) == T * L or queue[0].level <= end + 1:
            break
        yield from run_pass("fill", fill_chunks(len(queue), cfg.stage1_window, S))
        if cfg.reflection and queue[0].level < cfg.judged_level - cfg.reflect_blocks:
            queue = yield from _reflect(book, cfg, queue)

    popped, popping, it = 0, False, -1
    while popped < blocks * L:
        it += 1
        yield from run_pass("stage1", dynamic_chunks(len(queue), cfg.stage1_window, S, it))
        if queue[0].level <= end:
            if popping:
                block, queue[:L] = queue[:L], []
                popped += L
                yield from sink(block)
            popping = True
        if queue[-1].level <= T - 2:
            yield from append(T - 1, "noise")
    book.release(queue)


def unified_passes(book: Book, latents: list[Latent], cfg: PlanConfig) -> Generator[Event, object, None]:
    """Official stage 2 + refine over `latents` (all at one level), f0 windows, dynamic offset."""
    e = cfg.end_level - 1
    for lat in latents:
        lat.level = e  # official relabel; equal to the popped level in every reachable schedule
    passes = (("stage2", e, NOISE_STEP_STAGE2), ("refine", cfg.refine_level, NOISE_STEP_REFINE))
    for phase, steps, stream in passes:
        if phase == "refine":
            if steps == 0:
                break
            for lat in latents:
                lat.level = steps
            yield Renoise(tuple(x.serial for x in latents), tuple(x.slot for x in latents), steps)
        last = cfg.final_step and (phase == "refine" or not cfg.refine_level)
        for it in range(steps + last):
            for start, count in dynamic_chunks(len(latents), cfg.window, cfg.stride, it):
                inputs = latents[start : start + cfg.window]
                call = book.call(phase, inputs, range(count), noise_stream=stream)
                yield call
                book.advance(call, inputs)


def plan_miga(cfg: PlanConfig, num_latents: int) -> Generator[Event, object, None]:
    """Events of an offline (official) MIGA run emitting `num_latents` latents."""
    check_latents(cfg, num_latents)
    book = Book(miga_capacity(cfg, num_latents))
    saved: list[Latent] = []

    def keep(block):
        saved.extend(block)
        return iter(())

    yield from plan_stage1(cfg, num_latents, book, keep)
    yield from unified_passes(book, saved, cfg)
    for i, lat in enumerate(saved):
        yield Emit(lat.serial, lat.slot, keep=i < num_latents)
    book.release(saved)
