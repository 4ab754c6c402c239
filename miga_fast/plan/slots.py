"""Deterministic ring-slot allocation for planners."""

from __future__ import annotations


class SlotAllocator:
    """Hands out ring slots in [0, capacity); lowest free slot first so plans are reproducible."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))  # stack: pop() returns the lowest
        self.high_water = 0

    def take(self) -> int:
        if not self._free:
            raise RuntimeError(f"ring capacity {self.capacity} exhausted: planner capacity bound is wrong")
        slot = self._free.pop()
        self.high_water = max(self.high_water, self.capacity - len(self._free))
        return slot

    def give(self, slot: int) -> None:
        self._free.append(slot)
        self._free.sort(reverse=True)

    @property
    def live(self) -> int:
        return self.capacity - len(self._free)
