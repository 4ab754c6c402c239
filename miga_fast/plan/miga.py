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

Stage 1 (`plan_stage1`), the stage-2 level path (`stage2_passes`) and the offline stage 2
(`unified_passes`) serve both families; the Wan rules that differ (miga_wan.py) are explicit
`cfg.family == "wan"` branches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Iterator

from .book import Book, Latent, serials, slots
from .config import WAN_GUIDANCE_CENTRE, PlanConfig, check_latents
from .events import (
    NOISE_STEP_REFINE,
    NOISE_STEP_STAGE2,
    Emit,
    Event,
    IterationEnd,
    ModelCall,
    ReflectCheck,
    ReflectSelect,
    Renoise,
    ResetHistory,
)
from .windows import dynamic_chunks, fill_chunks, guidance_positions, rollout_chunks

PopSink = Callable[[list[Latent]], Generator[Event, object, None]]
# runtime.scores: the official consistency score per family (VC2 pooled; Wan per-frame `adjust_judge`)
REFLECT_SCORE = {"vc2": "pooled", "wan": "frame"}


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


def _stage1_call(book: Book, phase: str, queue: list[Latent], start: int, count: int, cfg: PlanConfig,
                 group: int = -1) -> tuple[ModelCall, list[Latent]]:
    """The model call for chunk (start, count): window [start, start+f0-m) with guidance, or the
    plain f0 window [start, start+f0) at the head; writes the chunk's `count` latents."""
    centre = WAN_GUIDANCE_CENTRE if cfg.family == "wan" else None  # official far-guidance offsets differ
    guide = guidance_positions(start, cfg.guidance_frames, cfg.zigzag, centre)
    if guide is None:
        inputs = queue[start : start + cfg.window]
        writes = range(count)
    else:
        inputs = [queue[p] for p in guide] + queue[start : start + cfg.stage1_window]
        writes = range(len(guide), len(guide) + count)
    return book.call(phase, inputs, writes, group=group), inputs


def _reflect(book: Book, cfg: PlanConfig, queue: list[Latent]) -> Generator[Event, object, list[Latent]]:
    """Official self-reflection on the judged block; returns the (possibly rebuilt) queue."""
    T, L, r, f0 = cfg.num_steps, cfg.zigzag, cfg.reflect_blocks, cfg.window
    score = REFLECT_SCORE[cfg.family]
    judged = cfg.judged_level - queue[0].level  # block index of the judged block
    guide = queue[(judged - r) * L : judged * L]
    triggered = yield ReflectCheck(slots(queue[judged * L : (judged + 1) * L]), slots(guide), cfg.reflect_threshold,
                                   score)
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
    accepted = yield ReflectSelect(tuple(slots(c[:L]) for c in candidates), slots(guide), score)
    for k, cand in enumerate(candidates):
        if k != accepted:
            book.release(cand)
    if accepted is None:
        return queue
    book.release(queue[judged * L :])
    return queue[: judged * L] + candidates[accepted]


def plan_stage1(cfg: PlanConfig, blocks: int, book: Book, sink: PopSink,
                groups: Iterator[int] | None = None) -> Generator[Event, object, None]:
    """Init, fill phase and main loop of stage 1 (both families); pops `blocks` head blocks into `sink`.

    Wan stage-1 iterations take their call group from `groups` (a fresh counter when None)."""
    T, L, f0, S, end = cfg.num_steps, cfg.zigzag, cfg.window, cfg.stride, cfg.end_level
    wan = cfg.family == "wan"
    groups = groups if groups is not None else itertools.count()
    queue: list[Latent] = []

    def append(source: str):
        for _ in range(L):  # "base": the last base latent noised to T-1; "noise": pure N(0,1)
            lat, ev = book.new(T - 1, source, f0 - 1 if source == "base" else -1)
            queue.append(lat)
            yield ev

    first = T - f0 // L - 1
    for j in range(f0):
        lat, ev = book.new(first + j // L, "base", j)
        queue.append(lat)
        yield ev

    for _ in range(min(blocks, T - f0 // L)):
        yield from append("base")
        if len(queue) == T * L or queue[0].level <= end + 1:
            break  # before denoising: the appended block stays at T-1
        for start, count in fill_chunks(len(queue), cfg.stage1_window, S):
            call, inputs = _stage1_call(book, "fill", queue, start, count, cfg)
            yield call
            book.advance(call, inputs)  # Gauss-Seidel: later windows read this step's results
        yield IterationEnd("fill", serials(queue))
        if cfg.reflection and queue[0].level < cfg.judged_level - cfg.reflect_blocks:
            queue = yield from _reflect(book, cfg, queue)

    popped, popping, it = 0, False, -1
    while popped < blocks:
        it += 1
        head, stepped = queue[0].level, []
        # Wan: one group per iteration, every window reads the pre-iteration queue (official Jacobi
        # update); VC2: windows run in order and guidance reads this iteration's results (Gauss-Seidel).
        group = next(groups) if wan else -1
        for start, count in dynamic_chunks(len(queue), cfg.stage1_window, S, it):
            call, inputs = _stage1_call(book, "stage1", queue, start, count, cfg, group)
            yield call
            if wan:
                stepped.append((call, inputs))
            else:
                book.advance(call, inputs)
        for call, inputs in stepped:
            book.advance(call, inputs)
        yield IterationEnd("stage1", serials(queue))
        # The official pop and append rules differ by family and are kept literal (module docstrings):
        # VC2 pops on the head's level after the iteration and appends pure noise every iteration; Wan
        # pops on its level before the iteration and appends the noised last base latent only once
        # popping and while the tail is at T-2 or above (so its queue may shrink).
        ready = queue[0].level <= end
        if popping and (head <= end if wan else ready):
            block, queue[:L] = queue[:L], []
            popped += 1
            yield from sink(block)
        popping = popping or ready  # the flag: popping starts one iteration after the head reaches end
        if wan and popping and queue[-1].level >= T - 2:
            yield from append("base")
        elif not wan and queue[-1].level <= T - 2:
            yield from append("noise")
    book.release(queue)


def stage2_passes(cfg: PlanConfig) -> tuple[tuple[str, int, int, int], ...]:
    """The family's stage-2 + refine level path: (phase, top, bottom, noise stream) per pass; a pass
    labels its latents `top` and steps them top..bottom, the refine pass after a re-noise to `top`."""
    if cfg.family == "wan":
        # Official: the popped latents (at end_level-1) are labelled end_level and stage 2 stops at
        # level 1, one step short of clean; refine always runs and reaches level 0 (sigma 0).
        return ("stage2", cfg.end_level, 1, NOISE_STEP_STAGE2), ("refine", cfg.refine_level, 0, NOISE_STEP_REFINE)
    # VC2: relabelled at end_level-1 (the popped level); refine_level 0 disables the refine pass; the
    # level-0 step of the last pass (a DDIM identity, never run officially) only with final_step.
    bottom = 0 if cfg.final_step else 1
    if not cfg.refine_level:
        return (("stage2", cfg.end_level - 1, bottom, NOISE_STEP_STAGE2),)
    return ("stage2", cfg.end_level - 1, 1, NOISE_STEP_STAGE2), ("refine", cfg.refine_level, bottom, NOISE_STEP_REFINE)


StepLevel = Callable[[str, int, int], Generator[Event, object, None]]


def stage2_path(cfg: PlanConfig, latents: list[Latent], step: StepLevel) -> Generator[Event, object, None]:
    """Walk `latents` along `stage2_passes`; `step(phase, iteration, noise_stream)` yields the calls that
    take every latent one level down (the latents share one level)."""
    if cfg.family == "wan":
        yield ResetHistory(serials(latents), slots(latents))  # official Wan: a fresh solver history for stage 2
    for phase, top, bottom, stream in stage2_passes(cfg):
        for lat in latents:
            lat.level = top
        if phase == "refine":
            yield Renoise(serials(latents), slots(latents), top)
        for it in range(top - bottom + 1):
            yield from step(phase, it, stream)


def unified_passes(book: Book, latents: list[Latent], cfg: PlanConfig,
                   groups: Iterator[int] | None = None) -> Generator[Event, object, None]:
    """Official offline stage 2 + refine over all `latents`: f0 windows with the dynamic offset. With
    `groups` (Wan) each iteration is one call group (official Jacobi update)."""

    def step(phase: str, it: int, stream: int):
        group, stepped = next(groups) if groups is not None else -1, []
        for start, count in dynamic_chunks(len(latents), cfg.window, cfg.stride, it):
            inputs = latents[start : start + cfg.window]
            call = book.call(phase, inputs, range(count), noise_stream=stream, group=group)
            yield call
            stepped.append((call, inputs))
        # A window reads nothing an earlier window of its iteration writes (each starts where the last
        # one's writes end), so advancing after the iteration equals VC2's window-by-window update.
        for call, inputs in stepped:
            book.advance(call, inputs)

    yield from stage2_path(cfg, latents, step)


def plan_offline(cfg: PlanConfig, num_latents: int, book: Book, blocks: int,
                 groups: Iterator[int] | None = None) -> Generator[Event, object, None]:
    """Offline (official) MIGA of either family: stage 1 keeps all `blocks` popped blocks, then stage 2
    + refine runs over all of them; latents past `num_latents` are emitted with keep=False."""
    saved: list[Latent] = []

    def keep(block):
        saved.extend(block)
        return iter(())

    yield from plan_stage1(cfg, blocks, book, keep, groups)
    yield from unified_passes(book, saved, cfg, groups)
    for i, lat in enumerate(saved):
        yield Emit(lat.serial, lat.slot, keep=i < num_latents)
    book.release(saved)


def plan_miga(cfg: PlanConfig, num_latents: int) -> Generator[Event, object, None]:
    """Events of an offline (official) VC2 MIGA run emitting `num_latents` latents."""
    check_latents(cfg, num_latents)
    yield from plan_offline(cfg, num_latents, Book(miga_capacity(cfg, num_latents)),
                            math.ceil(num_latents / cfg.zigzag))
