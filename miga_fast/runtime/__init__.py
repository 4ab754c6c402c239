"""Runtime: ring buffers, keyed noise and the engine that executes plans."""

from .engine import Engine, EngineError, EngineState, EngineStats
from .noise import CounterNoise
from .ring import LatentRing

__all__ = ["CounterNoise", "Engine", "EngineError", "EngineState", "EngineStats", "LatentRing"]
