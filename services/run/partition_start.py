"""Where a stream partition starts when a worker is given it.

The tables decide, not Kafka's committed offset: a partition starts after the lowest version
its application id has among the four tables and, when some table is ahead (a crash between two
tables' commits), replays exactly up to the highest (`DeltaSink.resume_points`). Two sources of
advice bound that:

- Kafka's committed offset is the floor (`kafka_floor`): past everything the tables hold (a new
  `--out`, offsets reset on purpose to skip a backlog), the partition starts there; the tables'
  chain goes on from it (`Batch.floor`). Decided on delta-rs's snapshot, so a lagging quick
  reading of the log never skips anything. With neither, offset 0.
- The broker's end offset: below the tables' start, the topic may have been re-created or moved
  (its offsets start again) or the broker may under-report its end (Tansu answers its last
  batch's first offset + 1). The partition is then fetched from the last offset the tables hold
  (`PartitionBuffer.probe`): a record there settles it; an earlier one means the broker reset
  our position, and the worker refuses the partition (`refusal`) rather than drop its records
  as "already written".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trapline.services.adapters import kafka_io
from trapline.services.run.delta_sink import DeltaSink
from trapline.services.run.stream_buffer import PartitionBuffer

if TYPE_CHECKING:
    from kafka import TopicPartition

log = logging.getLogger(__name__)


def start_buffers(
    sink: DeltaSink,
    consumer: Any,
    app_of: Callable[[TopicPartition], str],
    partitions: set[TopicPartition],
    exact: bool = False,
) -> dict[TopicPartition, PartitionBuffer]:
    """A fresh buffer per partition, at the offset it starts from (not yet seeked). Raises a
    storage error when the tables cannot be read. `exact`: read the tables' versions from the
    snapshot the commits are decided on (after a fence)."""
    points = sink.resume_points([app_of(tp) for tp in partitions], exact)
    ends = end_offsets(consumer, partitions)
    buffers = {}
    for tp in partitions:
        start, forced_end = points[app_of(tp)]
        if not exact and kafka_floor(consumer, tp, start, forced_end, quiet=True) is not None:
            # Kafka is ahead of the log as read quickly: decide on delta-rs's snapshot.
            start, forced_end = sink.resume_points([app_of(tp)], exact=True)[app_of(tp)]
        floor = kafka_floor(consumer, tp, start, forced_end)
        if floor is not None:
            start, forced_end = floor, None
        elif start is None:
            start = 0  # neither the tables nor Kafka know the partition: from its start
        buffer = PartitionBuffer(start=start, forced_end=forced_end, floor=floor)
        buffer.kafka_committed = consumer.committed(tp)
        if floor is None and start > ends.get(tp, start):
            buffer.probe = start - 1  # the tables are past the topic's end: is that so?
        buffers[tp] = buffer
    return buffers


def kafka_floor(
    consumer: Any,
    tp: TopicPartition,
    start: int | None,
    forced_end: int | None,
    quiet: bool = False,
) -> int | None:
    """Kafka's committed offset when it is past everything the tables hold of `tp`: the
    partition starts there. None when the tables know at least as much."""
    committed = consumer.committed(tp)
    if committed is None:
        return None
    held_to = -1 if start is None else (forced_end if forced_end is not None else start - 1)
    if committed <= held_to + 1:
        return None
    if start is not None and not quiet:
        log.warning(
            "partition %s/%d: Kafka's committed offset %d is past the tables' %d; starting at "
            "%d (offsets %d-%d were skipped on purpose or written elsewhere)",
            tp.topic, tp.partition, committed, held_to, committed, held_to + 1, committed - 1,
        )  # fmt: skip
    return committed


def end_offsets(consumer: Any, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
    """The broker's end offsets (advice: a broker may under-report them; the probe settles a
    doubt). {} when the broker does not answer."""
    try:
        return dict(consumer.end_offsets(list(partitions)))
    except kafka_io.KafkaError as error:
        log.warning("end offsets of %s not known (%s)", sorted(partitions), error)
        return {}


def refusal(tp: TopicPartition, buffer: PartitionBuffer, first: int) -> str:
    """Why a partition whose topic is behind its tables is refused, and the ways out."""
    sought = buffer.probe if buffer.probe is not None else buffer.start
    return (
        f"partition {tp.topic}/{tp.partition} refused: the tables hold it up to offset "
        f"{buffer.start - 1}, but the broker's offsets are behind (offset {first} came after "
        f"seeking to {sought}): the topic was re-created or moved to another cluster. Nothing "
        "of it is read, skipped or committed. Ways out (docs/operations.md, 'Tables ahead of "
        "the topic'): a new consumer group (TRAPLINE_CONSUMER_GROUP) reads the new topic from "
        "its start into the same tables, or a new --out"
    )
