"""Micro-batching: group items until the batch is full or its oldest item has waited long enough.

Models are fastest on full batches, users want results soon; `max_size` and `max_wait_s` trade
the two. The batcher holds no thread and no timer: callers `add` items and `poll` with the
time, so the same object serves a folder loop and a Kafka poll loop, and tests drive the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    def __init__(
        self, max_size: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic
    ):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._items: list[T] = []
        self._first_at = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> list[T] | None:
        """Add one item; returns a full batch when this item completes one."""
        if not self._items:
            self._first_at = self._clock()
        self._items.append(item)
        return self.flush() if len(self._items) >= self.max_size else None

    def poll(self) -> list[T] | None:
        """A partial batch whose oldest item has waited `max_wait_s`, else None."""
        if self._items and self._clock() - self._first_at >= self.max_wait_s:
            return self.flush()
        return None

    def flush(self) -> list[T]:
        """Everything pending, now (end of input, rebalance, shutdown)."""
        items, self._items = self._items, []
        return items


def batches(items: Iterable[T], max_size: int) -> Iterator[list[T]]:
    """Full batches from a finite iterable, then the remainder (folder runs never wait)."""
    batcher: MicroBatcher[T] = MicroBatcher(max_size, max_wait_s=float("inf"))
    for item in items:
        batch = batcher.add(item)
        if batch:
            yield batch
    rest = batcher.flush()
    if rest:
        yield rest
