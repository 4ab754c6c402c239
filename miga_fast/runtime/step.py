"""The static step: one model call of the engine as a fixed-shape, device-only function.

`window_step` does gather -> (re-noise context) -> timesteps -> CFG batch -> denoise -> CFG combine ->
solver step -> in-place `index_copy_` into the ring, with no host sync and no Python value derived from
a tensor. Its shapes depend only on the `StepKey` (B windows of F latents, guidance on/off, ...), so
`torch.compile(fullgraph=True, dynamic=False)` compiles it once per key and a CUDA graph captures it
once per key (`graph.py`).

Fixed-shape writes (the number W of written latents varies between calls of one window length): the
solver step runs on all N = B*F window rows, and each row is scattered to `write_slots[row]`, which is
the row's ring slot when the plan writes it and otherwise the ring's *dump slot* (one extra ring row
that no plan ever uses). So the scatter always has N rows; read-only rows land in the dump row (their
duplicate indices only ever collide there) and written rows get exactly the values of a W-row step,
because every solver and the scatter work row by row. The same holds for the multistep state: rows
read and written through `write_slots` touch only the written slots' history and the dump row. A
mask + `torch.where` against the old values would be wrong here: FIFO's overlapping windows hold one
latent twice in a batch (written by one window, read by the other), and a scatter of both copies has
no defined winner.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import EngineError
from ..ops.solver_update import solver_update
from ..plan.events import NOISE_RENOISE, ModelCall
from ..solvers.base import Solver, per_latent


class StepShapeError(EngineError):
    """The denoiser returned a prediction whose shape differs from its input's."""


def window_step(latents: Tensor, dst: Tensor, state: dict[str, Tensor], slots: Tensor, levels: Tensor,
                write_slots: Tensor, noise: Tensor | None, renoise_mask: Tensor | None,
                renoise_eps: Tensor | None, cond: Tensor, *, denoise: Callable, solver: Solver, batch: int,
                guidance_scale: float, fused: bool = False, ops_backend: str | None = None) -> Tensor:
    """One denoiser call over B windows + the solver step of every row; returns finite(pred) (0-d bool).

    latents [R, C, H, W]: the ring (R = capacity + 1, the last row is the dump slot), read by `slots`.
    dst [R, C, H, W]: where the stepped rows go (the ring itself, or the hold buffer of a split group).
    state: per-slot solver state (rows [R, ...]), read and updated in place through `write_slots`.
    slots, write_slots: long [N = B*F]; levels: long [N]; noise: [N, C, H, W] (zero on read-only rows)
    or None; renoise_mask: bool [N] with renoise_eps [N, C, H, W], or both None; cond: [B or 2B, S, D].
    batch, guidance_scale, fused, ops_backend: static (part of the step kind). fused: CFG combine + the solver's
    affine step + the write in one `solver_update` pass (memoryless solvers, `solver.affine_tables()`).
    """
    n = slots.shape[0]
    frames = n // batch
    x = latents.index_select(0, slots)  # [N, C, H, W]
    if renoise_mask is not None:  # static: read-only context re-noised on the fly (miga-stream)
        x = torch.where(per_latent(renoise_mask, x), solver.add_noise(x, renoise_eps, levels), x)
    t = solver.model_timesteps(levels).view(batch, frames).float()  # fp32 timesteps whatever the latent dtype
    xin = x.view(batch, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, C, F, H, W]
    cfg = guidance_scale != 1.0
    if cfg:  # cond and uncond stacked on B: one call
        xin, t = torch.cat([xin, xin]), torch.cat([t, t])
    pred = denoise(xin, t, cond)
    if pred.shape != xin.shape:
        raise StepShapeError(f"denoiser returned shape {tuple(pred.shape)} for input {tuple(xin.shape)} "
                             "[B, C, F, H, W]; it must return a prediction of the input's shape")
    # NaN/Inf anywhere makes the fp32 sum non-finite; finite values cannot overflow it (|pred| would need ~1e38
    # / N). One reduction instead of an elementwise isfinite + all (x7 faster on the bundled model's windows).
    finite = torch.isfinite(pred.sum(dtype=torch.float32))
    c, u = (pred[:batch], pred[batch:]) if cfg else (pred, None)
    if fused:  # [B, C, F, H, W] -> [B, F, C, H, W] views: rows n = b * F + f, as x
        solver_update(dst, write_slots, x, levels, c.transpose(1, 2), None if u is None else u.transpose(1, 2),
                      guidance_scale=guidance_scale, noise=noise, backend=ops_backend, **solver.affine_tables())
        return finite
    if cfg:
        c = u + guidance_scale * (c - u)
    new = solver.step(x, c.permute(0, 2, 1, 3, 4).reshape(x.shape), levels, slots=write_slots, state=state,
                      noise=noise)
    dst.index_copy_(0, write_slots, new)
    return finite


@dataclass(frozen=True)
class StepKey:
    """Everything that fixes a step's shapes and control flow: one compiled function / CUDA graph each."""

    batch: int  # B windows per call
    frames: int  # F latents per window
    cfg: bool  # classifier-free guidance: the denoiser sees 2B windows
    renoise: bool  # some read-only inputs are re-noised (renoise_mask / renoise_eps inputs)
    noise: bool  # stochastic solver: per-step noise input
    held: bool  # writes go to the hold buffer (a group split over several batches)

    @property
    def rows(self) -> int:
        return self.batch * self.frames

    def __str__(self) -> str:
        flags = [name for name in ("cfg", "renoise", "noise", "held") if getattr(self, name)]
        return f"B{self.batch}xF{self.frames}" + "".join(f"+{f}" for f in flags)


@dataclass
class StepInputs:
    """The per-call tensors of `window_step` (all on the device); see its docstring for shapes."""

    slots: Tensor
    levels: Tensor
    write_slots: Tensor
    noise: Tensor | None
    renoise_mask: Tensor | None
    renoise_eps: Tensor | None
    cond: Tensor

    def tensors(self) -> tuple:
        """Positional arguments of `window_step` after (latents, dst, state)."""
        return (self.slots, self.levels, self.write_slots, self.noise, self.renoise_mask, self.renoise_eps,
                self.cond)


@dataclass(frozen=True)
class HostStep:
    """Host-side (plain int) layout of one batched call: built from the plan events, no tensors."""

    slots: list[int]  # [N] ring slot of each window row
    levels: list[int]  # [N]
    write_slots: list[int]  # [N] slot for written rows, the dump slot for read-only rows
    writes: list[int]  # row indices written (W of them), for the step noise draws
    renoised: list[int]  # row indices re-noised before the call


def host_step(calls: list[ModelCall], dump_slot: int) -> HostStep:
    """Lay out B equal-length windows as N = B*F rows, padding the writes to N with `dump_slot`."""
    frames = len(calls[0].serials)
    slots = [s for c in calls for s in c.slots]
    levels = [lv for c in calls for lv in c.levels]
    writes = [b * frames + p for b, c in enumerate(calls) for p in c.writes]
    write_slots = [dump_slot] * len(slots)
    for i in writes:
        write_slots[i] = slots[i]
    renoised = [b * frames + p for b, c in enumerate(calls) for p in c.renoised]
    return HostStep(slots, levels, write_slots, writes, renoised)


def bind_step(**static) -> Callable:
    """`window_step` with its keyword-only (static) arguments bound, as a function with its own code object.

    Dynamo caches compiled code per code object, so each step kind gets its own cache: a new kind is a
    first compile, never a recompile, and kinds never share the recompile limit. (A `functools.partial`
    would not do: torch.compile wraps it in one shared frame.)
    """
    fn = window_step
    bound = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    bound.__kwdefaults__ = static
    return bound


def _compile(fn: Callable) -> Callable:
    """The one place the step is compiled (tests swap it for the identity to run the static step eagerly); its code
    goes to the persistent on-disk cache, so a later process starts warm (`compile_cache`)."""
    from .compile_cache import use_persistent_cache

    use_persistent_cache()
    return torch.compile(fn, fullgraph=True, dynamic=False)


@dataclass(frozen=True)
class StepSpec:
    """The static (bound) arguments of `window_step` shared by every step kind of one engine."""

    denoise: Callable
    solver: Solver
    guidance_scale: float
    fused: bool = False  # solver_update pass (memoryless affine solvers only)
    ops_backend: str | None = None  # backend of the fused solver_update (None: by device)

    def bind(self, key: StepKey) -> Callable:
        """The step of kind `key` as a function of its tensors (see `bind_step`)."""
        return bind_step(denoise=self.denoise, solver=self.solver, batch=key.batch,
                         guidance_scale=float(self.guidance_scale), fused=self.fused, ops_backend=self.ops_backend)


class StepRunner:
    """Runs `window_step` per `StepKey`: torch.compile'd (mode "compile") or as is (mode "eager").

    `compile_seconds[key]` is the wall time of the first call of each key (compile + one step; the step alone
    when uncompiled). A ring of another size (a longer offline-MIGA video) gets functions of its own rather than
    a recompile. Functions outlive videos: an engine reset keeps them.
    """

    def __init__(self, spec: StepSpec, *, compile: bool = True):
        self.spec, self.compile = spec, compile
        self.compile_seconds: dict[StepKey, float] = {}
        self._fns: dict[tuple[StepKey, int], Callable] = {}

    def __call__(self, key: StepKey, latents: Tensor, dst: Tensor, state: dict[str, Tensor],
                 inputs: StepInputs) -> Tensor:
        fn = self._fns.get((key, latents.shape[0]))
        if fn is None:
            fn = self.spec.bind(key)
            fn = self._fns[key, latents.shape[0]] = _compile(fn) if self.compile else fn
            start = time.perf_counter()
            finite = fn(latents, dst, state, *inputs.tensors())
            self.compile_seconds[key] = time.perf_counter() - start
            return finite
        return fn(latents, dst, state, *inputs.tensors())

    def reset(self) -> None:
        """A new video: nothing to drop (compiled code is guarded on the weights it reads by dynamo itself)."""


class StaticStepper:
    """Engine glue: turns batched `ModelCall`s into `StepInputs` and runs them through a runner.

    The ring must have one row more than the plan's capacity: its last row is the dump slot.
    `runner(key, latents, dst, state, inputs) -> finite` is a `StepRunner` or a `graph.GraphRunner`.
    """

    def __init__(self, runner: Callable, solver: Solver, latent_shape: tuple[int, ...], noise, *,
                 guidance: bool, device: torch.device, dtype: torch.dtype):
        self.runner, self.solver, self.noise = runner, solver, noise
        self.latent_shape, self.guidance = tuple(latent_shape), guidance
        self.device, self.dtype = device, dtype
        self.stochastic = solver.stochastic
        self.hold: Tensor | None = None  # [R, C, H, W], allocated on the first split group
        self.keys_seen: dict[StepKey, set[str]] = {}  # kind -> plan phases that used it
        self.last_key: StepKey | None = None  # kind of the latest call (benches time calls per kind)

    def _long(self, values: list[int]) -> Tensor:
        """Host index lists -> int64 on the device. On CUDA through pinned memory with a non-blocking copy: a
        `torch.tensor(list, device="cuda")` is a blocking host-to-device copy, 3-6 of them per step (pinned
        blocks are kept by torch's caching host allocator until their copy is done). Not yet run on a GPU."""
        host = torch.tensor(values, dtype=torch.long)
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def execute(self, calls: list[ModelCall], latents: Tensor, state: dict[str, Tensor], cond: Tensor,
                held: bool) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Step B windows; returns (finite, None) or, with `held`, (finite, (slots [W], new [W, C, H, W])).

        With `held`, the new latents go to the hold buffer (the ring keeps the pre-group values the
        other batches of the group read) and are returned for the engine to write at the group end.
        """
        dump = latents.shape[0] - 1
        h = host_step(calls, dump)
        n = len(h.slots)
        slots, levels, write_slots = self._long(h.slots), self._long(h.levels), self._long(h.write_slots)
        noise = None
        if self.stochastic:  # keyed draws for the written rows only, as the eager path draws them
            frames = len(calls[0].serials)
            serials = [calls[i // frames].serials[i % frames] for i in h.writes]
            draws = self.noise.draw(calls[0].noise_stream, serials, [h.levels[i] for i in h.writes],
                                    self.latent_shape, self.dtype)
            noise = torch.zeros((n, *self.latent_shape), device=self.device, dtype=self.dtype)
            noise.index_copy_(0, self._long(h.writes), draws.to(self.device))
        mask = eps = None
        if h.renoised:
            frames = len(calls[0].serials)
            rows = self._long(h.renoised)
            draws = self.noise.draw(NOISE_RENOISE, [calls[i // frames].serials[i % frames] for i in h.renoised],
                                    [h.levels[i] for i in h.renoised], self.latent_shape, self.dtype)
            eps = torch.zeros((n, *self.latent_shape), device=self.device, dtype=self.dtype)
            eps.index_copy_(0, rows, draws.to(self.device))
            mask = torch.zeros(n, dtype=torch.bool, device=self.device).index_fill_(0, rows, True)
        key = StepKey(len(calls), len(calls[0].serials), self.guidance, bool(h.renoised), self.stochastic, held)
        self.keys_seen.setdefault(key, set()).add(calls[0].phase)
        self.last_key = key
        dst = latents
        if held:
            if self.hold is None or self.hold.shape != latents.shape:
                self.hold = torch.empty_like(latents)
            dst = self.hold
        finite = self.runner(key, latents, dst, state, StepInputs(slots, levels, write_slots, noise, mask, eps,
                                                                 cond))
        if not held:
            return finite, None
        w = self._long([h.slots[i] for i in h.writes])
        return finite, (w, self.hold.index_select(0, w))
