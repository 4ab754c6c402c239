"""Engine mode "graph": the static step captured as one CUDA graph per `StepKey`, replayed per call.

Per key: static input buffers are allocated once and refreshed in place with `copy_` before every
replay (a graph replays fixed addresses); the step is warmed up on a side stream, then captured into
a memory pool shared by all graphs of the engine. Warm-up and capture run the real step, so they run
it with every write pointed at the ring's dump slot: the ring and the solver history are untouched.
A graph is re-captured when the persistent tensors it was captured on move: per call the ring,
the solver state and the solver's tables are checked (a bigger ring, a new `cond` shape, `solver.to`); the
denoiser's parameters and buffers are checked at capture and on `reset()` (once per video: a per-call walk
over every parameter would cost more than the replay on small models), so weights moved in the middle of a
video (`model.to(...)`) are not supported. `pool_budget_bytes` caps the pool: once captures have grown it past
the budget, new keys run the uncompiled static step instead (reported in `fallbacks`).

UNVERIFIED without a GPU: `CudaGraphBackend` (side-stream warm-up, capture, replay, pool accounting via
`torch.cuda.memory_reserved`) has never run; everything else here is tested on the CPU through a fake
backend that "captures" by calling the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .modes import GraphUnavailable, unavailable_reason
from .step import StepInputs, StepKey, StepSpec


class StaticInputs:
    """Preallocated buffers mirroring one `StepInputs` (None fields stay None); refreshed in place."""

    def __init__(self, like: StepInputs):
        self.buffers = {f.name: (None if getattr(like, f.name) is None else torch.empty_like(getattr(like, f.name)))
                        for f in fields(StepInputs)}

    def signature(self) -> tuple:
        """Shapes/dtypes of the buffers: a graph is only valid for inputs with this signature."""
        return tuple(None if b is None else (tuple(b.shape), b.dtype) for b in self.buffers.values())

    @staticmethod
    def signature_of(inputs: StepInputs) -> tuple:
        return tuple(None if t is None else (tuple(t.shape), t.dtype) for t in
                     (getattr(inputs, f.name) for f in fields(StepInputs)))

    def update(self, inputs: StepInputs) -> None:
        """Copy `inputs` into the buffers (same signature required; addresses never change)."""
        if self.signature_of(inputs) != self.signature():
            raise ValueError(f"inputs {self.signature_of(inputs)} do not match the static buffers {self.signature()}")
        for name, buf in self.buffers.items():
            if buf is not None:
                buf.copy_(getattr(inputs, name), non_blocking=True)

    def reset(self) -> None:
        """Zero every buffer in place (no reallocation: captured graphs stay valid)."""
        for buf in self.buffers.values():
            if buf is not None:
                buf.zero_()

    def as_inputs(self) -> StepInputs:
        return StepInputs(**self.buffers)

    def pointers(self) -> dict[str, int]:
        return {name: b.data_ptr() for name, b in self.buffers.items() if b is not None}


def bound_pointers(latents: Tensor, dst: Tensor, state: dict[str, Tensor], solver) -> tuple:
    """Addresses of the per-call persistent tensors a graph reads and writes directly: ring, destination,
    solver state and the solver's tables (its tensor attributes)."""
    tables = sorted((k, v.data_ptr()) for k, v in vars(solver).items() if isinstance(v, Tensor))
    return (latents.data_ptr(), dst.data_ptr(), *sorted((k, v.data_ptr()) for k, v in state.items()), *tables)


def weight_pointers(denoise: Callable) -> tuple[int, ...]:
    """Addresses of the parameters and buffers of the module behind `denoise` (a module or a bound method of
    one); () for a plain function."""
    owner = getattr(denoise, "__self__", denoise)
    if not isinstance(owner, torch.nn.Module):
        return ()
    return tuple(t.data_ptr() for t in (*owner.parameters(), *owner.buffers()))


class CudaGraphBackend:
    """torch.cuda graph capture with one memory pool shared by all graphs. UNVERIFIED: needs a GPU.

    Sharing is safe for any replay order because replays never overlap (one stream) and no tensor of a
    graph outlives its replay inside the pool: the step's `finite` flag is copied, inside the capture, into
    a buffer allocated outside the pool. (Left in the pool, graph B's output could sit in memory that was
    graph A's scratch when A was captured, and a replay of A would overwrite it.) Every pool tensor is
    recomputed by each replay before use.
    """

    def __init__(self, device: torch.device):
        reason = unavailable_reason(device)
        if reason is not None:
            raise GraphUnavailable(f"engine mode 'graph' cannot run: {reason}")
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def warmup(self, fn: Callable[[], Tensor], iters: int) -> None:
        # Side stream, as torch.cuda.graphs documents: lazy inits (cuBLAS handles, workspaces) happen here,
        # not inside the capture.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(iters):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def capture(self, fn: Callable[[], Tensor]) -> tuple[Callable[[], None], Tensor, int]:
        """Capture `fn` -> (replay, its static output, bytes the pool grew by)."""
        graph = torch.cuda.CUDAGraph()
        finite = torch.empty((), dtype=torch.bool, device=self.device)  # outside the pool (see the class doc)
        with torch.cuda.graph(graph, pool=self.pool):
            # read inside: entering the context syncs and empties the allocator's cache (a host-side stat,
            # no CUDA call, so it is legal during capture)
            before = torch.cuda.memory_reserved(self.device)
            finite.copy_(fn())
        return graph.replay, finite, max(torch.cuda.memory_reserved(self.device) - before, 0)


@dataclass
class _Graph:
    inputs: StaticInputs
    bound: tuple  # bound_pointers at capture
    weights: tuple  # weight_pointers at capture
    replay: Callable[[], None]
    finite: Tensor  # static output outside the pool, overwritten by each replay of this graph only


class GraphRunner:
    """Runner for the engine's "graph" mode (same call signature as `step.StepRunner`).

    pool_budget_bytes: None for no limit; else keys first seen after the pool grew past it run eagerly.
    backend: the capture backend (default CUDA; tests pass a CPU fake with `warmup` and `capture`).
    fallback_on_failure: a step kind whose warm-up or capture raises (a denoiser that syncs with the host,
    an op that cannot be captured) runs uncompiled from then on, the error kept in `fallbacks` (mode "auto");
    False re-raises it (mode "graph" was asked for explicitly).
    """

    def __init__(self, spec: StepSpec, device: torch.device, *, pool_budget_bytes: int | None = None,
                 warmup: int = 3, backend=None, fallback_on_failure: bool = False):
        self.backend = backend if backend is not None else CudaGraphBackend(torch.device(device))
        self.spec = spec
        self.pool_budget_bytes, self.warmup_iters = pool_budget_bytes, warmup
        self.pool_bytes = 0
        self.captures: dict[StepKey, int] = {}  # key -> times captured (1 in a steady run)
        self.fallbacks: dict[StepKey, str] = {}  # key -> why it runs without a graph
        self.fallback_on_failure = fallback_on_failure
        self._graphs: dict[StepKey, _Graph] = {}
        self._steps: dict[StepKey, Callable] = {}

    def _step(self, key: StepKey) -> Callable:
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = self.spec.bind(key)
        return step

    def _capture(self, key: StepKey, latents: Tensor, dst: Tensor, state: dict[str, Tensor],
                 inputs: StepInputs) -> _Graph:
        static = StaticInputs(inputs)
        static.update(inputs)
        # Warm-up and capture execute the step: every write goes to the dump slot so they change nothing.
        static.buffers["write_slots"].fill_(latents.shape[0] - 1)
        step = self._step(key)

        def run() -> Tensor:
            return step(latents, dst, state, *static.as_inputs().tensors())

        self.backend.warmup(run, self.warmup_iters)
        replay, finite, grown = self.backend.capture(run)
        self.pool_bytes += grown
        self.captures[key] = self.captures.get(key, 0) + 1
        return _Graph(static, bound_pointers(latents, dst, state, self.spec.solver), weight_pointers(self.spec.denoise),
                      replay, finite)

    def __call__(self, key: StepKey, latents: Tensor, dst: Tensor, state: dict[str, Tensor],
                 inputs: StepInputs) -> Tensor:
        graph = self._graphs.get(key)
        if graph is None and key in self.fallbacks:
            return self._step(key)(latents, dst, state, *inputs.tensors())
        if graph is None or graph.bound != bound_pointers(latents, dst, state, self.spec.solver) or \
                graph.inputs.signature() != StaticInputs.signature_of(inputs):
            if graph is None and self.pool_budget_bytes is not None and self.pool_bytes >= self.pool_budget_bytes:
                self.fallbacks[key] = (f"graph pool at {self.pool_bytes} bytes >= budget {self.pool_budget_bytes}: "
                                       "runs the uncompiled static step")
                return self._step(key)(latents, dst, state, *inputs.tensors())
            try:
                graph = self._graphs[key] = self._capture(key, latents, dst, state, inputs)
            except Exception as exc:  # noqa: BLE001 (recorded; the step runs as in eager mode)
                if not self.fallback_on_failure or graph is not None:
                    raise
                self.fallbacks[key] = f"capture failed ({type(exc).__name__}: {exc}): runs the uncompiled step"
                return self._step(key)(latents, dst, state, *inputs.tensors())
        graph.inputs.update(inputs)
        graph.replay()
        return graph.finite

    def reset(self) -> None:
        """Zero every static input buffer in place; the graphs stay captured and valid, except those captured
        on weights that have moved since (`model.to(...)`, a reassigned parameter): dropped, re-captured on
        their next call."""
        weights = weight_pointers(self.spec.denoise)
        for key in [k for k, g in self._graphs.items() if g.weights != weights]:
            del self._graphs[key]
        for graph in self._graphs.values():
            graph.inputs.reset()

    def pointers(self) -> dict[str, int]:
        """Addresses of every static buffer and output (stable across replays: asserted by tests)."""
        out = {}
        for key, graph in self._graphs.items():
            out.update({f"{key}.{name}": p for name, p in graph.inputs.pointers().items()})
            out[f"{key}.finite"] = graph.finite.data_ptr()
        return out
