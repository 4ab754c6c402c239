"""The engine: executes planner events over a preallocated ring with any per-frame denoiser.

Denoiser contract: `denoise(x [B, C, F, H, W], t [B, F], cond [B, S, D]) -> prediction [B, C, F, H, W]`
(eps for DDIM, velocity for flow matching). CFG is one batched call (cond and uncond stacked on B);
guidance_scale 1 skips the uncond half.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, require
from ..ops.solver_update import solver_tables, solver_update
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
from .noise import CounterNoise
from .ring import LatentRing
from .scores import SCORES
from .step import make_stepper, select_mode

NOISE_BASE = 5  # stream of the base-clip sampler's noise (outside the plan)


class EngineError(RuntimeError):
    """The denoiser, the plan or the input broke an engine invariant."""


@dataclass
class EngineStats:
    model_calls: int = 0
    windows: int = 0
    emitted: int = 0
    reflection_checks: int = 0
    reflection_triggers: int = 0
    reflection_accepts: int = 0


class Engine:
    """Runs FIFO / MIGA / miga-stream plans for one configuration, solver and denoiser.

    mode: "eager" (the reference per-call path), "compile" / "graph" (the fixed-shape static step of
    runtime/step.py, torch.compile'd or CUDA-graphed per step kind) or "auto"; see `mode` / `mode_why`.
    ops_backend: backend of the fused `solver_update` (CFG combine + DDIM / flow-Euler step + ring write) the
    eager path uses for memoryless solvers ("ref" / "triton" / "cpp"; default: by device, see
    miga_fast.ops.backend); multistep solvers (UniPC) step through `solver.step`.
    """

    def __init__(self, denoise: Callable[[Tensor, Tensor, Tensor], Tensor], solver: Solver, cfg: PlanConfig,
                 latent_shape: tuple[int, int, int], *, cond: Tensor, uncond: Tensor | None = None,
                 guidance_scale: float = 1.0, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, window_batch: int = 0, noise_method: str | None = None,
                 mode: str = "eager", graph_pool_budget: int | None = None, ops_backend: str | None = None):
        self.cfg = cfg.validated()
        require(guidance_scale >= 0, "guidance_scale", "a number >= 0", guidance_scale)
        require(window_batch >= 0, "window_batch", "an integer >= 0 (0: a whole group per call)", window_batch)
        require(len(latent_shape) == 3, "latent_shape", "(C, H, W)", latent_shape)
        if solver.num_steps != self.cfg.num_steps:
            raise ConfigError(f"solver.num_steps must equal num_steps={self.cfg.num_steps} "
                              f"(got {solver.num_steps})")
        if guidance_scale != 1.0 and uncond is None:
            raise ConfigError("uncond must be given when guidance_scale != 1")
        self.denoise, self.solver = denoise, solver.to(device)
        self.latent_shape = tuple(latent_shape)
        self.device, self.dtype = torch.device(device), dtype
        self.guidance_scale, self.window_batch = float(guidance_scale), window_batch
        self.noise = CounterNoise(seed, self.device, noise_method)
        self.set_condition(cond, uncond)
        self.ring: LatentRing | None = None
        self.stats = EngineStats()
        self._stochastic = getattr(solver, "eta", 0.0) > 0
        self.ops_backend = ops_backend
        try:  # memoryless affine solvers: one fused pass replaces CFG combine + step + index_copy_
            self._tables = solver_tables(self.solver)
        except TypeError:
            self._tables = None
        self._cfg_inputs: dict[tuple[int, ...], Tensor] = {}
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        # mode compile / graph: model calls run the fixed-shape static step (runtime/step.py), whose ring
        # has one extra "dump" row; `mode_why` says, for each mode not active, why.
        self.mode, self.mode_why = select_mode(mode, self.device)
        self._static = make_stepper(self.mode, denoise, self.solver, self.guidance_scale, self.latent_shape,
                                    self.noise, self.device, dtype, graph_pool_budget=graph_pool_budget)

    # ---------------------------------------------------------------- conditions
    def set_condition(self, cond: Tensor, uncond: Tensor | None = None) -> None:
        """Text condition(s) [1, S, D]; may change between iterations (prompt schedules)."""
        cond = cond.to(self.device, self.dtype)
        self._cond = cond
        self._uncond = None if uncond is None else uncond.to(self.device, self.dtype)
        self._cond_cache: dict[int, Tensor] = {}

    def _conditions(self, batch: int) -> Tensor:
        c = self._cond_cache.get(batch)
        if c is None:
            parts = [self._cond.expand(batch, *self._cond.shape[1:])]
            if self.guidance_scale != 1.0:
                parts.append(self._uncond.expand(batch, *self._uncond.shape[1:]))
            c = self._cond_cache[batch] = torch.cat(parts).contiguous()
        return c

    # ---------------------------------------------------------------- base clip
    def sample_base(self, frames: int | None = None) -> Tensor:
        """A plain short-clip sample of f0 latents (every frame at one level, T steps): [f0, C, H, W]."""
        f0 = frames or self.cfg.window
        T = self.cfg.num_steps
        serials = list(range(f0))
        x = self.noise.draw(NOISE_BASE, serials, [T] * f0, self.latent_shape, self.dtype).to(self.device)
        state = self.solver.init_state(f0, self.latent_shape, self.device, self.dtype)
        slots = torch.arange(f0, device=self.device)
        for level in range(T - 1, -1, -1):
            levels = torch.full((f0,), level, dtype=torch.long, device=self.device)
            pred = self._predict(x.unsqueeze(0), levels.unsqueeze(0)).squeeze(0)
            noise = self.noise.draw(NOISE_BASE, serials, [level] * f0, self.latent_shape, self.dtype) \
                if self._stochastic else None
            x = self.solver.step(x, pred, levels, slots=slots, state=state, noise=noise)
        return x

    # ---------------------------------------------------------------- running a plan
    def run(self, num_latents: int, base: Tensor | None = None, decide=None,
            on_event: Callable[[Event], None] | None = None) -> Iterator[Tensor]:
        """Generate `num_latents` output latents, yielded in order as [C, H, W] tensors.

        base: the clean base clip [f0, C, H, W] (sampled with `sample_base` when None).
        decide: optional override for reflection decisions (tests); on_event: progress hook.
        """
        cfg = self.cfg
        plan = make_plan(cfg, num_latents)  # validates num_latents
        if base is None:
            base = self.sample_base()
            self._require_finite("the base clip was sampled")
        if tuple(base.shape) != (cfg.window, *self.latent_shape):
            raise EngineError(f"base clip must have shape {(cfg.window, *self.latent_shape)} "
                              f"[f0, C, H, W] (got {tuple(base.shape)})")
        self._base = base.to(self.device, self.dtype)
        capacity = ring_capacity(cfg, num_latents) + (self._static is not None)  # + the dump slot
        if self.ring is None or self.ring.capacity < capacity:
            self.ring = LatentRing(capacity, self.latent_shape, self.solver, self.device, self.dtype)
        self._owner = {}  # slot -> serial living there (host-side plan validation)
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        self._last_score: Tensor | None = None
        self._held: list[tuple[Tensor, Tensor]] | None = None  # writes of a group split over batches
        pending: list[ModelCall] = []
        reply = None
        while True:
            try:
                event = plan.send(reply)
            except StopIteration:
                break
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
            elif isinstance(event, ReflectSelect):
                reply = decide(event) if decide else self._reflect_select(event)
            if on_event is not None and isinstance(event, IterationEnd | Emit):
                on_event(event)

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
        if not bool(self._finite):
            raise EngineError(f"the denoiser produced non-finite values (NaN/Inf) before {when}; "
                              "check the model weights, dtype and inputs")

    def _predict(self, x: Tensor, levels: Tensor) -> Tensor:
        """Denoiser prediction (CFG-combined) for windows x [B, F, C, H, W] at levels [B, F]."""
        cond, uncond = self._predict_split(x, levels)
        pred = cond if uncond is None else uncond + self.guidance_scale * (cond - uncond)
        return pred.permute(0, 2, 1, 3, 4)  # [B, F, C, H, W]

    def _predict_split(self, x: Tensor, levels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Conditional and unconditional (None without CFG) predictions [B, C, F, H, W] of one batched call."""
        B, F = levels.shape
        t = self.solver.model_timesteps(levels.flatten()).view(B, F).float()  # fp32: bf16 rounds 999 to 1000
        xin = x.permute(0, 2, 1, 3, 4)  # [B, C, F, H, W]
        expect = tuple(xin.shape)
        if self.guidance_scale != 1.0:
            buf = self._cfg_inputs.get(expect)
            if buf is None:
                buf = self._cfg_inputs[expect] = torch.empty((2 * B, *expect[1:]), device=self.device,
                                                              dtype=self.dtype)
            buf[:B].copy_(xin)
            buf[B:].copy_(xin)
            xin, t = buf, t.repeat(2, 1)
        pred = self.denoise(xin, t, self._conditions(B))
        if tuple(pred.shape) != tuple(xin.shape):
            raise EngineError(f"denoiser returned shape {tuple(pred.shape)} for input {tuple(xin.shape)} "
                              "[B, C, F, H, W]; it must return a prediction of the input's shape")
        self._finite &= torch.isfinite(pred).all()
        self.stats.model_calls += 1
        self.stats.windows += B
        if self.guidance_scale != 1.0:
            return pred[:B], pred[B:]
        return pred, None

    def _execute_group_end(self, calls: list[ModelCall]) -> None:
        """Run the last batch of a group, then write back the batches held for it."""
        self._execute(calls)
        for slots, new in self._held or ():
            self.ring.latents.index_copy_(0, slots, new)
        self._held = None

    def _execute(self, calls: list[ModelCall]) -> None:
        """One batched denoiser call over windows of equal length, then the solver step on writes."""
        B, F = len(calls), len(calls[0].serials)
        for c in calls:
            self._check_live(c.serials, c.slots)
        if self._static is not None:
            finite, held = self._static.execute(calls, self.ring.latents, self.ring.state, self._conditions(B),
                                                self._held is not None)
            self._finite &= finite
            if held is not None:
                self._held.append(held)
            self.stats.model_calls += 1
            self.stats.windows += B
            return
        flat_slots = [s for c in calls for s in c.slots]
        flat_levels = [lv for c in calls for lv in c.levels]
        slots = torch.tensor(flat_slots, device=self.device)
        levels = torch.tensor(flat_levels, dtype=torch.long, device=self.device)
        x = self.ring.gather(slots)  # [B*F, C, H, W]
        renoise = [(b * F + p, c.serials[p], c.levels[p]) for b, c in enumerate(calls) for p in c.renoised]
        if renoise:
            pos, ser, lvs = zip(*renoise, strict=True)
            idx = torch.tensor(pos, device=self.device)
            eps = self.noise.draw(NOISE_RENOISE, ser, lvs, self.latent_shape, self.dtype)
            x[idx] = self.solver.add_noise(x[idx], eps, levels[idx])
        writes = [b * F + p for b, c in enumerate(calls) for p in c.writes]
        w = torch.tensor(writes, device=self.device)
        w_slots = slots[w]
        noise = None
        if self._stochastic:
            noise = self.noise.draw(calls[0].noise_stream, [calls[i // F].serials[i % F] for i in writes],
                                    [flat_levels[i] for i in writes], self.latent_shape, self.dtype)
        if self._tables is not None and self._held is None:
            # fused: CFG combine + step of the written rows straight into their ring slots
            cond, uncond = self._predict_split(x.view(B, F, *self.latent_shape), levels.view(B, F))
            solver_update(self.ring.latents, w_slots, x, levels[w], cond.transpose(1, 2),
                          None if uncond is None else uncond.transpose(1, 2), guidance_scale=self.guidance_scale,
                          rows=w, noise=noise, backend=self.ops_backend, **self._tables)
            return
        pred = self._predict(x.view(B, F, *self.latent_shape), levels.view(B, F))
        new = self.solver.step(x[w], pred.reshape(B * F, *self.latent_shape)[w], levels[w],
                               slots=w_slots, state=self.ring.state, noise=noise)
        if self._held is not None:  # solver state may move now: calls of a group write disjoint slots
            self._held.append((w_slots, new))
        else:
            self.ring.latents.index_copy_(0, w_slots, new)

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
