"""Build plans by family and mode, drive them without tensors, and print them as comparable call traces.

Trace format (one JSON object per model call, in execution order):
    {"phase": ..., "inputs": [[serial, level], ...], "writes": [[input_position, serial], ...]}
plus "candidate": k for self-reflection rollout calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator

from .config import PlanConfig
from .events import Event, ModelCall, ReflectCheck, ReflectSelect
from .fifo import fifo_capacity, plan_fifo
from .miga import miga_capacity, plan_miga
from .miga_wan import plan_wan_miga, wan_miga_capacity
from .stream import plan_miga_stream, stream_capacity

Decide = Callable[[Event], object]


def make_plan(cfg: PlanConfig, num_latents: int) -> Generator[Event, object, None]:
    """The event generator for `cfg.family` and `cfg.mode`. Reflection events expect a reply via `send`."""
    cfg = cfg.validated()
    plans = {("vc2", "fifo"): plan_fifo, ("vc2", "miga"): plan_miga, ("vc2", "miga-stream"): plan_miga_stream,
             ("wan", "miga"): plan_wan_miga, ("wan", "miga-stream"): plan_miga_stream}
    return plans[cfg.family, cfg.mode](cfg, num_latents)


def ring_capacity(cfg: PlanConfig, num_latents: int) -> int:
    """Ring slots a plan needs; independent of N for fifo and miga-stream."""
    if cfg.mode == "fifo":
        return fifo_capacity(cfg)
    if cfg.mode == "miga":
        return (wan_miga_capacity if cfg.family == "wan" else miga_capacity)(cfg, num_latents)
    return stream_capacity(cfg)


def never_reflect(event: Event) -> object:
    """Decision policy for planning without a model: no reflection check ever triggers."""
    return False if isinstance(event, ReflectCheck) else None


def scripted_reflect(triggers: set[int], accept: int | None) -> Decide:
    """Decision policy for tests: trigger the checks whose ordinal is in `triggers` and accept
    candidate `accept` (None: reject every candidate)."""
    count = [0]

    def decide(event: Event) -> object:
        if isinstance(event, ReflectCheck):
            count[0] += 1
            return count[0] - 1 in triggers
        if isinstance(event, ReflectSelect):
            return accept
        return None

    return decide


def drive(plan: Generator[Event, object, None], decide: Decide = never_reflect) -> Iterator[Event]:
    """Iterate a plan, answering reflection events with `decide`."""
    reply = None
    while True:
        try:
            event = plan.send(reply)
        except StopIteration:
            return
        reply = decide(event) if isinstance(event, ReflectCheck | ReflectSelect) else None
        yield event


def call_record(call: ModelCall) -> dict:
    rec = {
        "phase": call.phase,
        "inputs": [[s, lv] for s, lv in zip(call.serials, call.levels, strict=True)],
        "writes": [[p, call.serials[p]] for p in call.writes],
    }
    if call.candidate >= 0:
        rec["candidate"] = call.candidate
    return rec


def trace_records(cfg: PlanConfig, num_latents: int, decide: Decide = never_reflect) -> Iterator[dict]:
    for event in drive(make_plan(cfg, num_latents), decide):
        if isinstance(event, ModelCall):
            yield call_record(event)


def trace_lines(cfg: PlanConfig, num_latents: int, decide: Decide = never_reflect) -> Iterator[str]:
    for rec in trace_records(cfg, num_latents, decide):
        yield json.dumps(rec, separators=(",", ":"))
