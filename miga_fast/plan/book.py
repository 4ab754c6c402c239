"""Planner bookkeeping: latent records (`Latent`), serial numbering and ring-slot allocation (`Book`)."""

from __future__ import annotations

from collections.abc import Sequence

from .events import NOISE_STEP, ModelCall, NewLatent
from .slots import SlotAllocator


class Latent:
    """A planned latent: its creation serial, its ring slot and its current level."""

    __slots__ = ("serial", "slot", "level")

    def __init__(self, serial: int, slot: int, level: int):
        self.serial, self.slot, self.level = serial, slot, level

    def __repr__(self) -> str:
        return f"Latent(serial={self.serial}, slot={self.slot}, level={self.level})"


def serials(latents: Sequence[Latent]) -> tuple[int, ...]:
    return tuple(x.serial for x in latents)


def slots(latents: Sequence[Latent]) -> tuple[int, ...]:
    return tuple(x.slot for x in latents)


class Book:
    """Creates latents (serial counter + ring slots) and builds model calls that advance them."""

    def __init__(self, capacity: int):
        self.slots = SlotAllocator(capacity)
        self.next_serial = 0

    def new(self, level: int, source: str, base_index: int = -1) -> tuple[Latent, NewLatent]:
        lat = Latent(self.next_serial, self.slots.take(), level)
        self.next_serial += 1
        return lat, NewLatent(lat.serial, lat.slot, level, source, base_index)

    def release(self, latents: Sequence[Latent]) -> None:
        for lat in latents:
            self.slots.give(lat.slot)

    @staticmethod
    def call(phase: str, inputs: Sequence[Latent], writes: Sequence[int], *, levels=None,
             noise_stream: int = NOISE_STEP, candidate: int = -1, group: int = -1,
             renoised: tuple[int, ...] = ()) -> ModelCall:
        """A model call over `inputs`; `levels` overrides the latents' own levels (FIFO padding)."""
        return ModelCall(
            phase=phase,
            serials=serials(inputs),
            slots=slots(inputs),
            levels=tuple(levels) if levels is not None else tuple(x.level for x in inputs),
            writes=tuple(writes),
            noise_stream=noise_stream,
            candidate=candidate,
            group=group,
            renoised=renoised,
        )

    @staticmethod
    def advance(call: ModelCall, inputs: Sequence[Latent]) -> None:
        """Move every written latent of `call` down one level (after the call is executed)."""
        for p in call.writes:
            inputs[p].level -= 1
