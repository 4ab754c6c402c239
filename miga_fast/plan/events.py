"""The events a planner emits and the engine executes. Plain data: no tensors.

Every latent ever created gets a `serial` (creation order) and lives in one ring `slot` until it
is released; the planner owns both numberings, the engine only follows them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Noise streams: the engine draws the Gaussian noise of an event from a counter-based generator
# keyed by (stream, serial, level), so any two executions of a plan see identical noise whatever
# their batching or order.
NOISE_NEW = 0  # the eps that creates a latent (forward noising or a fresh N(0,1) draw)
NOISE_STEP = 1  # per-step noise of a stochastic solver (DDIM eta > 0), stage 1 / fifo / rollout
NOISE_STEP_STAGE2 = 2
NOISE_STEP_REFINE = 3
NOISE_RENOISE = 4  # the eps of a re-noise (refine pass) or of a noised read-only context latent


@dataclass(frozen=True)
class NewLatent:
    """Create latent `serial` in `slot` at `level`.

    source "noise": x = eps (pure N(0,1)); source "base": x = add_noise(base[base_index], eps, level).
    """

    serial: int
    slot: int
    level: int
    source: str
    base_index: int = -1


@dataclass(frozen=True)
class ModelCall:
    """One denoiser call over a window; latents listed in model order (position 0 first).

    `writes` are input positions whose latents take one solver step (level -> level-1) and are
    written back to their slot; the other positions are read-only context. `renoised` positions are
    read-only inputs formed as add_noise(stored latent, eps, level) (miga-stream context).
    Calls sharing a non-negative `group` read the ring as it was before the group, write disjoint
    latents and may be batched together.
    """

    phase: str
    serials: tuple[int, ...]
    slots: tuple[int, ...]
    levels: tuple[int, ...]
    writes: tuple[int, ...]
    noise_stream: int = NOISE_STEP
    candidate: int = -1
    group: int = -1
    renoised: tuple[int, ...] = ()


@dataclass(frozen=True)
class Renoise:
    """Forward-noise stored clean latents in place to `level` (MIGA refine pass)."""

    serials: tuple[int, ...]
    slots: tuple[int, ...]
    level: int


@dataclass(frozen=True)
class ResetHistory:
    """Forget the multistep-solver history of these latents (official Wan stage 2 starts a fresh
    per-latent UniPC dict for latents that keep their values)."""

    serials: tuple[int, ...]
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Emit:
    """Latent `serial` is finished; it is part of the output video when `keep` (FIFO warm-up latents
    and MIGA's rounding of N up to whole blocks are emitted with keep=False)."""

    serial: int
    slot: int
    keep: bool = True


@dataclass(frozen=True)
class ReflectCheck:
    """Score the judged block against the guide blocks; the driver sends back True to trigger.

    `score` names the official consistency score (runtime.scores.SCORES): "pooled" (VC2) or "frame" (Wan)."""

    judged_slots: tuple[int, ...]
    guide_slots: tuple[int, ...]
    threshold: float
    score: str = "pooled"


@dataclass(frozen=True)
class ReflectSelect:
    """Score each candidate's judged block against the guide; the driver sends back the accepted
    candidate index, or None when no candidate beats the score that triggered the check."""

    candidate_slots: tuple[tuple[int, ...], ...]
    guide_slots: tuple[int, ...]
    score: str = "pooled"


@dataclass(frozen=True)
class IterationEnd:
    """A queue iteration (fifo, fill or stage1) finished its windows; `queue` lists the serials
    in the queue, head first, before any pop or append. For progress reporting and invariants."""

    phase: str
    queue: tuple[int, ...]


Event = IterationEnd | NewLatent | ModelCall | Renoise | ResetHistory | Emit | ReflectCheck | ReflectSelect
