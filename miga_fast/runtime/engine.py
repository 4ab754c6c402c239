"""The engine: executes planner events over a preallocated ring with any per-frame denoiser.

Denoiser contract: `denoise(x [B, C, F, H, W], t [B, F], cond [B, S, D]) -> prediction [B, C, F, H, W]`
(eps for DDIM, velocity for flow matching). CFG is one batched call (cond and uncond stacked on B);
guidance_scale 1 skips the uncond half.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, EngineError, NonFiniteError, require
from ..plan import (
    Emit,
    Event,
    IterationEnd,
    ModelCall,
    NewLatent,
    PlanConfig,
    ReflectCheck,
    ReflectSelect,
    Renoise,
    ResetHistory,
    make_plan,
    ring_capacity,
)
from ..plan.events import NOISE_NEW, NOISE_RENOISE
from ..solvers.base import Solver
from .modes import select_mode
from .noise import CounterNoise
from .ring import LatentRing
from .scores import SCORES
from .step import StaticStepper, StepRunner, StepSpec

NOISE_BASE = 5  # stream of the base-clip sampler's noise (outside the plan)


@dataclass
class EngineStats:
    model_calls: int = 0
    windows: int = 0
    emitted: int = 0
    reflection_checks: int = 0
    reflection_triggers: int = 0
    reflection_accepts: int = 0


@dataclass
class EngineState:
    """Everything a run needs to go on exactly from an emitted latent (see `Engine.snapshot`).

    Tensors: `latents` [capacity, C, H, W] and `solver_state` (rows [capacity, ...]) are the plan's ring slots
    (the dump slot and any rows a longer earlier video added are not saved), `base` [f0, C, H, W] the base clip,
    `last_score` the reflection score (0-d, or None). Host data: `cursor` = plan events consumed, `replies` = the
    replies sent for reflection events so far (in order: replaying the pure plan with them restores the planner's
    position), `owner` = slot -> serial of live latents, `stats`, `seed` and `num_latents` of the run.
    """

    latents: Tensor
    solver_state: dict[str, Tensor]
    base: Tensor
    last_score: Tensor | None
    cursor: int
    replies: list
    owner: dict[int, int]
    stats: dict
    seed: int
    num_latents: int


class Engine:
    """Runs FIFO / MIGA / miga-stream plans for one configuration, solver and denoiser, video after video.

    Every model call is the one static step (runtime/step.py, fixed shapes per step kind) run by the executor
    `mode`: "eager" (as is), "compile" (torch.compile'd per step kind), "graph" (CUDA-graphed per step kind) or
    "auto"; see `mode` / `mode_why`. The engine is long-lived: its ring, step functions, compiled code and
    graphs are made on first use and kept; `reset(seed, cond, uncond)` starts a new video in the same buffers.
    Memory held: the ring (capacity + 1 latents and solver history; offline "miga" grows it with the longest
    video run so far), a hold buffer of the same size once a group is split over batches, per-batch condition
    buffers, and in "compile" / "graph" mode the compiled code / graph pool of each step kind.
    fused: CFG combine + solver step + ring write in one `solver_update` pass (default: when the solver has
    `affine_tables()`); ops_backend: its backend ("ref" / "triton" / "cpp"; default by device).
    """

    def __init__(self, denoise: Callable[[Tensor, Tensor, Tensor], Tensor], solver: Solver, cfg: PlanConfig,
                 latent_shape: tuple[int, int, int], *, cond: Tensor, uncond: Tensor | None = None,
                 guidance_scale: float = 1.0, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, window_batch: int = 0, noise_method: str | None = None,
                 mode: str = "eager", graph_pool_budget: int | None = None, ops_backend: str | None = None,
                 fused: bool | None = None):
        self.cfg = cfg.validated()
        require(guidance_scale >= 0, "guidance_scale", "a number >= 0", guidance_scale)
        require(window_batch >= 0, "window_batch", "an integer >= 0 (0: a whole group per call)", window_batch)
        require(len(latent_shape) == 3, "latent_shape", "(C, H, W)", latent_shape)
        if solver.num_steps != self.cfg.num_steps:
            raise ConfigError(f"solver.num_steps must equal num_steps={self.cfg.num_steps} "
                              f"(got {solver.num_steps})")
        tables = solver.affine_tables()
        require(fused is not True or tables is not None, "fused", "False or None for a solver with per-slot "
                f"history ({type(solver).__name__})", fused)
        self.denoise, self.solver = denoise, solver.to(device)
        self.latent_shape = tuple(latent_shape)
        self.device, self.dtype = torch.device(device), dtype
        self.guidance_scale, self.window_batch = float(guidance_scale), window_batch
        self.fused = tables is not None if fused is None else fused
        self.ring: LatentRing | None = None
        self._unchecked: list[tuple[list[ModelCall], Tensor]] = []  # calls (and their finite flag) since the last check
        self._calls = 0  # model calls of the current run (names a failing one)
        self._held = None
        self._cond_bufs: dict[int, Tensor] = {}  # batch -> [B or 2B, S, D], refreshed in place
        self.mode, self.mode_why = select_mode(mode, self.device)
        self.spec = StepSpec(denoise, self.solver, self.guidance_scale, self.fused, ops_backend)
        if self.mode == "graph":
            from .graph import GraphRunner

            runner = GraphRunner(self.spec, self.device, pool_budget_bytes=graph_pool_budget,
                                 fallback_on_failure=mode == "auto")
        else:
            runner = StepRunner(self.spec, compile=self.mode == "compile")
        noise = CounterNoise(seed, self.device, noise_method)
        self.stepper = StaticStepper(runner, self.solver, self.latent_shape, noise, guidance=self.guidance_scale != 1.0,
                                     device=self.device, dtype=dtype)
        self.reset(seed, cond, uncond)

    # ---------------------------------------------------------------- a new video
    def reset(self, seed: int, cond: Tensor, uncond: Tensor | None = None) -> None:
        """Start a new video in the same buffers: keyed-noise seed, text condition(s) [1, S, D], fresh stats.

        Nothing is reallocated or recompiled; the next `run` gives exactly what a new engine would give.
        """
        if self.guidance_scale != 1.0 and uncond is None:
            raise ConfigError("uncond must be given when guidance_scale != 1")
        self.noise.reseed(seed)
        self.set_condition(cond, uncond)
        self.runner.reset()
        self.stats = EngineStats()

    @property
    def noise(self) -> CounterNoise:
        """The keyed noise every draw of the engine comes from (replaceable: tests key it per packed video)."""
        return self.stepper.noise

    @noise.setter
    def noise(self, noise) -> None:
        self.stepper.noise = noise

    @property
    def runner(self):
        """The executor's runner: a `step.StepRunner` (eager / compile) or a `graph.GraphRunner`."""
        return self.stepper.runner

    @property
    def step_kinds(self) -> dict:
        """Step kinds (`StepKey`) run so far, across videos, with the plan phases that used each."""
        return self.stepper.keys_seen

    def pointers(self) -> dict[str, int]:
        """Storage addresses of every buffer the engine keeps between calls and videos (tests assert they stay)."""
        ptrs = {} if self.ring is None else self.ring.pointers()
        ptrs.update({f"cond.{b}": t.data_ptr() for b, t in self._cond_bufs.items()})
        if self.stepper.hold is not None:
            ptrs["hold"] = self.stepper.hold.data_ptr()
        if hasattr(self.runner, "pointers"):
            ptrs.update({f"graph.{k}": p for k, p in self.runner.pointers().items()})
        return ptrs

    # ---------------------------------------------------------------- conditions
    def set_condition(self, cond: Tensor, uncond: Tensor | None = None) -> None:
        """Text condition(s) [1, S, D]; may change between iterations (prompt schedules) and videos."""
        self._cond = cond.to(self.device, self.dtype)
        self._uncond = None if uncond is None else uncond.to(self.device, self.dtype)
        for batch in list(self._cond_bufs):
            self._fill_conditions(batch)

    def _fill_conditions(self, batch: int) -> Tensor:
        """cond (and uncond with CFG) expanded to `batch` windows, in a buffer kept per batch (same address)."""
        parts = [self._cond.expand(batch, *self._cond.shape[1:])]
        if self.guidance_scale != 1.0:
            parts.append(self._uncond.expand(batch, *self._uncond.shape[1:]))
        rows = sum(p.shape[0] for p in parts)
        buf = self._cond_bufs.get(batch)
        if buf is None or buf.shape != (rows, *self._cond.shape[1:]):
            buf = self._cond_bufs[batch] = torch.empty((rows, *self._cond.shape[1:]), device=self.device,
                                                       dtype=self.dtype)
        torch.cat(parts, out=buf)
        return buf

    def conditions(self, batch: int) -> Tensor:
        """The condition input of a call of `batch` windows: [B (2B with CFG), S, D]."""
        buf = self._cond_bufs.get(batch)
        return buf if buf is not None else self._fill_conditions(batch)

    # ---------------------------------------------------------------- base clip
    def sample_base(self, frames: int | None = None) -> Tensor:
        """A plain short-clip sample of f0 latents (every frame at one level, T steps): [f0, C, H, W].

        Runs through the same static step as the plan, in the ring's first f0 slots (free before a plan starts).
        """
        f0 = frames or self.cfg.window
        T = self.cfg.num_steps
        self._ensure_ring(f0 + 1)
        serials, slots = tuple(range(f0)), tuple(range(f0))
        self.ring.latents[:f0] = self.noise.draw(NOISE_BASE, serials, [T] * f0, self.latent_shape,
                                                 self.dtype).to(self.device)
        if self.ring.state:
            self.solver.reset_slots(self.ring.state, torch.arange(f0, device=self.device))
        for level in range(T - 1, -1, -1):
            self._step([ModelCall("base", serials, slots, (level,) * f0, slots, noise_stream=NOISE_BASE)], False)
        return self.ring.latents[:f0].clone()

    def _ensure_ring(self, capacity: int) -> None:
        if self.ring is None or self.ring.capacity < capacity:
            self.ring = LatentRing(capacity, self.latent_shape, self.solver, self.device, self.dtype)

    # ---------------------------------------------------------------- running a plan
    def run(self, num_latents: int, base: Tensor | None = None, decide=None,
            on_event: Callable[[Event], None] | None = None, resume: EngineState | None = None) -> Iterator[Tensor]:
        """Generate `num_latents` output latents, yielded in order as [C, H, W] tensors.

        base: the clean base clip [f0, C, H, W] (sampled with `sample_base` when None).
        decide: optional override for reflection decisions (tests); on_event: progress hook.
        resume: a `snapshot()` of a run of the same plan, seed and denoiser: the run goes on after the latent that
        snapshot was taken at, exactly as if it had never stopped (the next yield is the latent after it).
        """
        cfg = self.cfg
        plan = make_plan(cfg, num_latents)  # validates num_latents
        self._capacity = ring_capacity(cfg, num_latents)
        self._ensure_ring(self._capacity + 1)  # + the static step's dump slot
        self._unchecked, self._calls = [], 0
        self._held: list[tuple[Tensor, Tensor]] | None = None  # writes of a group split over batches
        self._cursor, self._replies, self._num_latents = 0, [], num_latents
        if resume is not None:
            self._restore(plan, resume)
        else:
            if base is None:
                base = self.sample_base()
                self._require_finite("the base clip was sampled")
            if tuple(base.shape) != (cfg.window, *self.latent_shape):
                raise EngineError(f"base clip must have shape {(cfg.window, *self.latent_shape)} "
                                  f"[f0, C, H, W] (got {tuple(base.shape)})")
            self._base = base.to(self.device, self.dtype)
            self._owner = {}  # slot -> serial living there (host-side plan validation)
            self._last_score: Tensor | None = None
        pending: list[ModelCall] = []
        reply = None
        while True:
            try:
                event = plan.send(reply)
            except StopIteration:
                break
            self._cursor += 1
            reply = None
            if isinstance(event, ModelCall) and event.group >= 0:
                if pending and pending[0].group != event.group:
                    self._execute_group_end(pending)
                    pending = []
                elif pending and (len(pending[0].serials) != len(event.serials) or len(pending) == self.window_batch):
                    # The group continues in another batch: hold the writes so that batch reads the
                    # ring as it was before the group (guidance latents of Wan's Jacobi stage 1).
                    self._held = self._held if self._held is not None else []
                    self._execute(pending)
                    pending = []
                pending.append(event)
                continue
            if pending:
                self._execute_group_end(pending)
                pending = []
            if isinstance(event, ModelCall):
                self._execute([event])
            elif isinstance(event, NewLatent):
                self._new_latent(event)
            elif isinstance(event, Renoise):
                self._renoise(event)
            elif isinstance(event, ResetHistory):
                self._check_live(event.serials, event.slots)
                if self.ring.state:
                    self.solver.reset_slots(self.ring.state, torch.tensor(event.slots, device=self.device))
            elif isinstance(event, Emit):
                out = self._emit(event)
                if out is not None:
                    yield out
            elif isinstance(event, ReflectCheck):
                reply = decide(event) if decide else self._reflect_check(event)
                self._replies.append(reply)
            elif isinstance(event, ReflectSelect):
                reply = decide(event) if decide else self._reflect_select(event)
                self._replies.append(reply)
            if on_event is not None and isinstance(event, IterationEnd | Emit):
                on_event(event)

    # ---------------------------------------------------------------- stopping and going on
    def snapshot(self) -> EngineState:
        """The run's state, taken while `run` is suspended at a yielded latent (the only points where no group is
        half done); device tensors are copied to the host. Its size is fixed by the ring, not by the video length
        (but for `replies`: one small int or bool per reflection decision so far)."""
        if self._held is not None:
            raise EngineError("snapshot() is only valid between yielded latents of a run")
        cap = self._capacity
        host = {k: v[:cap].cpu().clone() if v.dim() and v.shape[0] == self.ring.capacity else v.cpu().clone()
                for k, v in self.ring.state.items()}
        return EngineState(self.ring.latents[:cap].cpu().clone(), host, self._base.cpu().clone(),
                           None if self._last_score is None else self._last_score.detach().cpu().clone(),
                           self._cursor, list(self._replies), dict(self._owner), asdict(self.stats),
                           self.noise.seed, self._num_latents)

    def _restore(self, plan, state: EngineState) -> None:
        """Replay the (pure, tensor-free) plan up to the snapshot's cursor with its recorded replies, then load the
        ring, solver history, base clip and host bookkeeping."""
        if state.num_latents != self._num_latents or state.seed != self.noise.seed:
            raise EngineError(f"resume: the snapshot is of a run of {state.num_latents} latents with seed "
                              f"{state.seed} (this run: {self._num_latents} latents, seed {self.noise.seed})")
        if tuple(state.latents.shape) != (self._capacity, *self.latent_shape):
            raise EngineError(f"resume: snapshot ring {tuple(state.latents.shape)} does not fit this plan's "
                              f"{(self._capacity, *self.latent_shape)}")
        replies, reply, event = iter(state.replies), None, None
        for _ in range(state.cursor):
            try:
                event = plan.send(reply)
            except StopIteration as exc:
                raise EngineError(f"resume: the plan ends before the snapshot's event {state.cursor}") from exc
            reply = next(replies) if isinstance(event, ReflectCheck | ReflectSelect) else None
        if not isinstance(event, Emit) or reply is not None:
            raise EngineError("resume: the snapshot was not taken at an emitted latent of this plan")
        self._cursor, self._replies = state.cursor, list(state.replies)
        self.ring.latents[: self._capacity].copy_(state.latents)
        for k, v in self.ring.state.items():
            (v[: self._capacity] if v.dim() and v.shape[0] == self.ring.capacity else v).copy_(state.solver_state[k])
        self._base = state.base.to(self.device, self.dtype)
        self._last_score = None if state.last_score is None else state.last_score.to(self.device)
        self._owner = {int(k): int(v) for k, v in state.owner.items()}
        self.stats = EngineStats(**state.stats)

    # ---------------------------------------------------------------- event handlers
    def _check_live(self, serials, slots) -> None:
        for s, sl in zip(serials, slots, strict=True):
            if self._owner.get(sl) != s:
                raise EngineError(f"plan references latent serial {s} in ring slot {sl}, which holds "
                                  f"{self._owner.get(sl, 'nothing')}: the latent is not in the queue")

    def _new_latent(self, ev: NewLatent) -> None:
        ring = self.ring
        eps = self.noise.draw(NOISE_NEW, [ev.serial], [ev.level], self.latent_shape, self.dtype)
        if ev.source == "base":
            lv = torch.tensor([ev.level], device=self.device)
            eps = self.solver.add_noise(self._base[ev.base_index : ev.base_index + 1], eps, lv)
        ring.latents[ev.slot] = eps[0]
        if ring.state:
            self.solver.reset_slots(ring.state, torch.tensor([ev.slot], device=self.device))
        self._owner[ev.slot] = ev.serial

    def _renoise(self, ev: Renoise) -> None:
        self._check_live(ev.serials, ev.slots)
        slots = torch.tensor(ev.slots, device=self.device)
        n = len(ev.slots)
        eps = self.noise.draw(NOISE_RENOISE, ev.serials, [ev.level] * n, self.latent_shape, self.dtype)
        levels = torch.full((n,), ev.level, dtype=torch.long, device=self.device)
        self.ring.latents.index_copy_(0, slots, self.solver.add_noise(self.ring.latents[slots], eps, levels))
        if self.ring.state:
            self.solver.reset_slots(self.ring.state, slots)

    def _emit(self, ev: Emit) -> Tensor | None:
        self._check_live([ev.serial], [ev.slot])
        if not ev.keep:
            return None
        self._require_finite(f"latent {ev.serial} was emitted")
        self.stats.emitted += 1
        return self.ring.latents[ev.slot].clone()

    def _require_finite(self, when: str) -> None:
        """One host read per check: raise naming the first call since the last check whose output was not finite."""
        if not self._unchecked:
            return
        calls, flags = zip(*self._unchecked, strict=True)
        self._unchecked = []
        ok = torch.stack(flags)
        if bool(ok.all()):
            return
        first = int((~ok).nonzero()[0])
        index = self._calls - len(flags) + first + 1
        c = calls[first]
        serials = [x.serials for x in c]
        levels = [x.levels for x in c]
        raise NonFiniteError(f"the denoiser produced non-finite values (NaN/Inf) in model call {index} of this run "
                             f"(phase {c[0].phase}, windows {len(c)}, serials {serials}, levels {levels}), before "
                             f"{when}; no frame of it was emitted. Check the model weights, dtype and inputs")

    def _execute_group_end(self, calls: list[ModelCall]) -> None:
        """Run the last batch of a group, then write back the batches held for it."""
        self._execute(calls)
        for slots, new in self._held or ():
            self.ring.latents.index_copy_(0, slots, new)
        self._held = None

    def _execute(self, calls: list[ModelCall]) -> None:
        """One batched denoiser call over windows of equal length (plan events: liveness checked first)."""
        for c in calls:
            self._check_live(c.serials, c.slots)
        self._step(calls, self._held is not None)

    def _step(self, calls: list[ModelCall], held: bool) -> None:
        finite, new = self.stepper.execute(calls, self.ring.latents, self.ring.state, self.conditions(len(calls)),
                                           held)
        self._calls += 1
        self._unchecked.append((calls, finite.clone()))  # a graph's output buffer is reused by its next replay
        if new is not None:
            self._held.append(new)
        self.stats.model_calls += 1
        self.stats.windows += len(calls)

    def _reflect_check(self, ev: ReflectCheck) -> bool:
        """Official rule: trigger when previous score - current score > threshold (one host read)."""
        lat = self.ring.latents
        score = SCORES[ev.score](lat[list(ev.judged_slots)], lat[list(ev.guide_slots)])
        prev, self._last_score = self._last_score, score
        self.stats.reflection_checks += 1
        fired = prev is not None and bool(prev - score > ev.threshold)
        self.stats.reflection_triggers += fired
        return fired

    def _reflect_select(self, ev: ReflectSelect) -> int | None:
        """Best candidate by score against the guide; accepted only if it beats the last score."""
        lat = self.ring.latents
        guide = lat[list(ev.guide_slots)]
        scores = torch.stack([SCORES[ev.score](guide, lat[list(c)]) for c in ev.candidate_slots])  # official order
        best = int(torch.argmax(scores))  # first maximum, like the official strict '>' scan
        if bool(scores[best] > self._last_score):
            self._last_score = scores[best]
            self.stats.reflection_accepts += 1
            return best
        return None
