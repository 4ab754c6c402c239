"""Engine modes (executors): which wrapper runs the one static step, and why the others do not run.

"eager": the step as plain PyTorch; "compile": `torch.compile` of it per step kind; "graph": CUDA graphs of it
per step kind; "auto": graph on CUDA, else eager. Depends on nothing else in runtime/ (step.py and graph.py
import it, never each other's caller).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

ENGINE_MODES = ("eager", "compile", "graph", "auto")


class GraphUnavailable(RuntimeError):
    """Mode "graph" was requested where CUDA graphs cannot run."""


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why CUDA graphs cannot run on `device`, or None when they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return (f"CUDA graphs record and replay GPU kernel launches, so they need a CUDA device "
                f"(the engine runs on {device.type!r}; torch.cuda.is_available() = {torch.cuda.is_available()})")
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no driver/GPU, or a CPU-only torch build)"
    return None


def select_mode(requested: str, device: torch.device) -> tuple[str, dict[str, str]]:
    """The engine mode to run and, for each mode not run, why. Raises for an impossible request."""
    if requested not in ENGINE_MODES:
        raise ConfigError(f"engine mode must be one of {ENGINE_MODES} (got {requested!r})")
    no_graph = unavailable_reason(device)
    if requested == "graph" and no_graph:
        raise GraphUnavailable(f"engine mode 'graph' cannot run: {no_graph}. Use mode='compile' or 'eager'.")
    if requested == "auto":
        active = "eager" if no_graph else "graph"
        why = {"compile": "not chosen by mode='auto': it costs a compile per step kind (tens of seconds "
                          "on a CPU); request mode='compile'",
               "graph" if no_graph else "eager": no_graph or "mode='auto' prefers CUDA graphs on a CUDA device"}
        return active, why
    why = {m: "not requested" for m in ("eager", "compile", "graph") if m != requested}
    if no_graph and requested != "graph":
        why["graph"] = no_graph
    return requested, why
