"""The planner: schedules as data (pure index math, no tensors)."""

from .config import MODES, PRESETS, PlanConfig, check_latents, preset
from .events import (
    Emit,
    Event,
    IterationEnd,
    ModelCall,
    NewLatent,
    ReflectCheck,
    ReflectSelect,
    Renoise,
    ResetHistory,
)
from .trace import drive, make_plan, ring_capacity, scripted_reflect, trace_lines, trace_records

__all__ = [
    "MODES", "PRESETS", "PlanConfig", "check_latents", "preset", "Emit", "Event", "IterationEnd", "ModelCall",
    "NewLatent", "ReflectCheck", "ReflectSelect", "Renoise", "ResetHistory", "drive", "make_plan", "ring_capacity",
    "scripted_reflect", "trace_lines", "trace_records",
]
