"""An in-memory stand-in for a Kafka consumer and producer, to drive a `StreamWorker` in unit tests.

Fake on purpose (the integration tests use the real Tansu broker): it has just the calls the
worker makes, one partition log per (topic, partition), and a fixed assignment that the test
hands out and takes back (`revoke`), so a zombie and its successor can be staged exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition


@dataclass(frozen=True)
class MemoryRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list = field(default_factory=list)


class MemoryLog:
    """The broker's partitions: (topic, partition) -> records, and the DLQ's sent records."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], list[MemoryRecord]] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.sent: list[tuple[str, bytes | None, bytes, list]] = []
        self._ends: dict[tuple[str, int], int] = {}  # next offset per partition

    def append(self, topic: str, partition: int, value: bytes, key: bytes | None = None) -> None:
        records = self.partitions.setdefault((topic, partition), [])
        records.append(MemoryRecord(topic, partition, self.end(topic, partition), key, value))
        self._ends[(topic, partition)] = records[-1].offset + 1

    def append_marker(self, topic: str, partition: int) -> None:
        """Take an offset without a record a consumer sees (a transaction's commit marker)."""
        self.partitions.setdefault((topic, partition), [])
        self._ends[(topic, partition)] = self.end(topic, partition) + 1

    def end(self, topic: str, partition: int) -> int:
        return self._ends.get((topic, partition), 0)


class _Delivered:
    def get(self, timeout: float | None = None) -> None:
        return None


class MemoryProducer:
    def __init__(self, log: MemoryLog):
        self.log = log

    def send(
        self, topic: str, key: bytes | None = None, value: bytes = b"", headers: list | None = None
    ):
        self.log.sent.append((topic, key, value, headers or []))
        return _Delivered()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class MemoryConsumer:
    """Owns `partitions` of `log` from the first poll on, until `revoke()`."""

    def __init__(
        self,
        log: MemoryLog,
        partitions: list[tuple[str, int]],
        max_records: int = 500,
        reported_end: int | None = None,
    ):
        """`reported_end`: what `end_offsets` answers instead of the truth (Tansu answers
        less than the true end: its last batch's first offset + 1)."""
        self.log = log
        self.reported_end = reported_end
        self.owned = [TopicPartition(t, p) for t, p in partitions]
        self.max_records = max_records
        self.position: dict[TopicPartition, int] = {}
        self.listener: Any = None
        self._announced = False
        self._paused: set[TopicPartition] = set()

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.listener = listener

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[MemoryRecord]]:
        if not self._announced:
            self._announced = True
            self.listener.on_partitions_assigned(set(self.owned))
            return {}
        polled = {}
        for tp in self.owned:
            if tp in self._paused:
                continue
            records = self.log.partitions.get((tp.topic, tp.partition), [])
            start = self.position.get(tp, 0)
            if start > self.log.end(tp.topic, tp.partition):
                start = 0  # out of range: auto_offset_reset="earliest", as a real broker does
            batch = [r for r in records if r.offset >= start][: self.max_records]
            if batch:
                polled[tp] = batch
                self.position[tp] = batch[-1].offset + 1
        return polled

    def revoke(self) -> None:
        self.listener.on_partitions_revoked(set(self.owned))
        self.owned = []
        self._paused.clear()

    def assign(self, partitions: list[tuple[str, int]]) -> None:
        """Hand `partitions` to this consumer again (a rebalance that gives them back); the
        first fetch starts at the group's committed offset, as Kafka's does."""
        self.owned = [TopicPartition(t, p) for t, p in partitions]
        for tp in self.owned:
            self.position[tp] = self.log.committed.get((tp.topic, tp.partition), 0)
        self.listener.on_partitions_assigned(set(self.owned))

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned) if self._announced else set()

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position[tp] = offset

    def committed(self, tp: TopicPartition) -> int | None:
        return self.log.committed.get((tp.topic, tp.partition))

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        for tp, meta in offsets.items():
            self.log.committed[(tp.topic, tp.partition)] = meta.offset

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.reported_end is not None:
            return {tp: self.reported_end for tp in partitions}
        return {tp: self.log.end(tp.topic, tp.partition) for tp in partitions}

    def close(self, autocommit: bool = False) -> None:
        pass
