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

The code is shared with VC2 (miga.py: `plan_stage1`, `stage2_passes`, `plan_offline`), with the rules
above as explicit family branches. wan-miga-stream (ours) is stream.py's driver: the same stage 1, then
the bounded-memory stage 2 (chunks of f0 - ctx new latents, the last ctx finished latents re-noised per
call as read-only context), where every chunk takes the official Wan level path above (reset,
end_level..1, re-noise, refine_level..0). Nothing is dropped, so N output latents need ceil(N/L)
popped blocks.

Not reproduced, as it has no effect on the schedule: the unseeded global CUDA RNG and the unused
seed_g draw (our noise is keyed per latent), rollout calls without write-back, and the dead
`prev_sample is None` branch. Model-side quirks (exactly 21-frame windows, the output head's adaLN
using frame 0's timestep, bf16 autocast) belong to the model and engine, not to the plan.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Generator

from .book import Book
from .config import PlanConfig, check_latents
from .events import Event
from .miga import plan_offline, stage1_capacity


def official_iterations(cfg: PlanConfig, num_latents: int) -> int:
    """Official `long_iter_nums` n for N output latents: the smallest n with n*L - f0 >= N."""
    return math.ceil((num_latents + cfg.window) / cfg.zigzag)


def wan_miga_capacity(cfg: PlanConfig, num_latents: int) -> int:
    """Offline: the stage-1 ring plus every popped latent, kept until stage 2 (official)."""
    return stage1_capacity(cfg) + official_iterations(cfg, num_latents) * cfg.zigzag


def plan_wan_miga(cfg: PlanConfig, num_latents: int) -> Generator[Event, object, None]:
    """Events of an offline (official) Wan MIGA run emitting `num_latents` latents; the official output
    drops the last f0 stage-2 latents (N <= n*L - f0), emitted here with keep=False."""
    check_latents(cfg, num_latents)
    book = Book(wan_miga_capacity(cfg, num_latents))
    # one group counter for stage 1 and stage 2: group ids stay unique over the run
    yield from plan_offline(cfg, num_latents, book, official_iterations(cfg, num_latents), itertools.count())
