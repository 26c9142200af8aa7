"""The stream's batch buffer: per Kafka partition, the records polled but not yet in the tables.

A `PartitionBuffer` holds a partition's records from `start` (the first offset the tables do
not hold) on, with each record's results once the stages ran (as soon as a model batch is
there, not when the commit is due). At a checkpoint it says how far
the partition may be written now (`ready_end`: the event hold of `pipelines/events.py`, or
exactly `forced_end` when a replay must end where some tables already are), and after the
commit `advance` forgets what was written. `process_pending` runs the stages on every
partition's new records at once, in model-sized batches.

A buffer holds a gapless run of offsets from `start`: a record past the next expected offset
is not kept, and the partition is fetched again from the expected one (`accept` returns it).
Only when that re-fetch answers with the same later offset does the buffer accept the gap
(offsets the topic holds no record at: transaction markers, aborted or compacted records,
records retention deleted) and remember it, so a commit never claims an offset it did not
hold. Before this, records fetched from Kafka's committed offset in the poll that assigned a
partition were kept past a resume point the tables put earlier, and the commit claimed the
offsets in between (photos in no table after kill -9: issue 36).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trapline.pipelines.batching import batches
from trapline.pipelines.deployments import cached_deployments
from trapline.pipelines.events import HeldPhoto, batch_end
from trapline.pipelines.flow import PhotoPipeline, resolve_timestamp
from trapline.pipelines.types import Failure, MediaResult
from trapline.pipelines.uploads import record_source
from trapline.services.adapters import kafka_io
from trapline.services.run import metrics
from trapline.services.settings import Settings

log = logging.getLogger(__name__)


def held_records_limit(settings: Settings) -> int:
    """A partition's bound on unwritten records: at this length its buffer is written up to
    the last processed record even inside a burst, and the worker fetches nothing more for it
    until then (`StreamWorker._hold_back`; one poll may overshoot by `poll_max_records`), so
    its memory is bounded whatever the backlog."""
    return 4 * settings.batch_max_records


@dataclass
class PartitionBuffer:
    """One partition's unwritten records, from `start` on."""

    start: int  # first offset the tables do not hold
    forced_end: int | None = None  # write exactly up to here: some tables hold it, or a retry
    # The tables' chain continues from offset `floor` - 1 even though a table holds less:
    # Kafka's committed offset was past every table at resume (offsets reset on purpose).
    floor: int | None = None
    records: list[Any] = field(default_factory=list)
    arrived: dict[int, float] = field(default_factory=dict)  # offset -> when it was polled
    done: dict[int, tuple[list[MediaResult], list[Failure]]] = field(default_factory=dict)
    refetch_from: int | None = None  # a gap was seen: the partition is fetched again from here
    # The broker's end offset was below `start`: fetched from here (`start` - 1, a record the
    # tables hold) to learn whether the topic really ends before the tables (re-created or
    # moved: refused) or the broker under-reports its end (Tansu: the probe comes back).
    probe: int | None = None
    kafka_committed: int | None = None  # the group's committed offset when it started (advice)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # confirmed empty ranges

    def next_offset(self) -> int:
        """The offset the next record must have for the run of offsets to stay gapless."""
        return self.records[-1].offset + 1 if self.records else self.start

    def accept(self, records: list[Any], now: float) -> tuple[int, int | None]:
        """Keep the records that continue the run; returns (how many were kept, the offset to
        fetch from again when a gap stopped it, else None). Records already held or written
        (a replay after a seek) are passed over."""
        kept = 0
        if self.probe is not None and records:
            if records[0].offset == self.probe:
                records = records[1:]  # it is there: the tables hold it
            self.probe = None
        for record in records:
            expected = self.next_offset()
            if record.offset < expected:
                continue
            if record.offset > expected:
                if self.refetch_from != expected:
                    self.refetch_from = expected
                    return kept, expected
                self._skip(record, expected)
            self.refetch_from = None
            self.records.append(record)
            self.arrived[record.offset] = now
            kept += 1
        return kept, None

    def _skip(self, record: Any, expected: int) -> None:
        """Fetched again from `expected`, the partition's first record is still `record`: the
        topic has no record at the offsets between (transaction markers, aborted or compacted
        records, or records that retention deleted)."""
        self.skipped.append((expected, record.offset - 1))
        metrics.OFFSETS_WITHOUT_RECORDS.labels(record.topic).inc(record.offset - expected)
        log.warning(
            "partition %s/%d holds no record at offsets %d-%d (fetched twice): transaction "
            "markers, aborted or compacted records, or deleted by retention; going on at %d",
            record.topic, record.partition, expected, record.offset - 1, record.offset,
        )  # fmt: skip

    def add(self, record: Any, now: float) -> bool:
        """Keep `record` if it continues the run (`accept` for one record)."""
        kept, _ = self.accept([record], now)
        return bool(kept)

    def waited(self, now: float) -> float:
        """How long the oldest unwritten record has waited."""
        return now - self.arrived[self.records[0].offset] if self.records else 0.0

    def unprocessed(self) -> list[Any]:
        """The records the stages have not run on yet: those after the processed ones (the
        stages run in offset order, and `done` holds only records still here)."""
        return self.records[len(self.done) :]

    def ready_end(self, settings: Settings, now: float, drain: bool = False) -> int | None:
        """The last offset to write now, or None if nothing can be written yet."""
        processed = self._processed()
        if not processed:
            return None
        last = processed[-1].offset
        if self.forced_end is not None:  # a replay: exactly the range some tables hold
            return self.forced_end if last >= self.forced_end else None
        if drain or len(self.records) >= held_records_limit(settings):
            return last  # a burst this long is cut anyway: memory and latency stay bounded
        end = batch_end(self._held_photos(settings), last, settings.sequence_gap_s,
                        settings.sequence_hold_s, now)  # fmt: skip
        return end if end >= self.start else None

    def _processed(self) -> list[Any]:
        """The records whose results are in (a prefix: they are processed in offset order)."""
        return self.records[: len(self.done)]

    def batch(self, end: int) -> tuple[list[Any], list[MediaResult], list[Failure]]:
        """The records up to `end` with their results and failures (already processed)."""
        records = [r for r in self.records if r.offset <= end]
        results: list[MediaResult] = []
        failures: list[Failure] = []
        for record in records:
            done_results, done_failures = self.done[record.offset]
            results += done_results
            failures += done_failures
        return records, results, failures

    def skipped_in(self, end: int) -> list[tuple[int, int]]:
        """The confirmed empty ranges up to `end`: the offsets a batch ending there may lack."""
        return [(first, last) for first, last in self.skipped if first <= end]

    def pin(self, end: int) -> None:
        """A checkpoint of [start, end] failed after some tables may have committed it: the
        retry writes exactly this range again, whatever the event hold would cut now (a
        shorter retry left tables at different ends of the range, and every replay was fenced
        at the one that lay inside it: a partition stalled for good)."""
        if self.forced_end is None:
            self.forced_end = end

    def advance(self, end: int) -> None:
        """The tables hold everything up to `end`: forget it."""
        for record in self.records:
            if record.offset <= end:
                self.done.pop(record.offset, None)
                self.arrived.pop(record.offset, None)
        self.records = [r for r in self.records if r.offset > end]
        self.skipped = [(first, last) for first, last in self.skipped if last > end]
        self.start = end + 1
        self.forced_end = None
        self.floor = None

    def _held_photos(self, settings: Settings) -> list[HeldPhoto]:
        deployments = cached_deployments(settings.deployments_file)
        default_tz = settings.tzinfo()
        photos = []
        for record in self._processed():
            for result in self.done[record.offset][0]:
                when: datetime | None = resolve_timestamp(result, deployments, default_tz)[0]
                photos.append(
                    HeldPhoto(record.offset, result.ref.deployment_id, when,
                              self.arrived[record.offset])
                )  # fmt: skip
        return photos


def process_pending(
    buffers: Iterable[PartitionBuffer],
    pipeline: PhotoPipeline,
    settings: Settings,
    on_uploaded_at: Callable[[str, datetime], None] = lambda source, when: None,
    limit: int | None = None,
) -> None:
    """Parse the records not processed yet (at most `limit` per partition, oldest first) and
    run the stages on them, across partitions, in model-sized batches; results are kept per
    offset until written. The limit bounds one checkpoint's work (and so its latency).

    Raises `BackendUnavailable` (models away) or `StorageUnavailable` (photos' store away):
    nothing is recorded, the records stay pending.
    """
    pending = [(b, r) for b in buffers for r in b.unprocessed()[:limit]]
    if not pending:
        return
    refs = []
    outputs: dict[str, tuple[list[MediaResult], list[Failure]]] = {}
    for _, record in pending:
        metrics.EVENTS_CONSUMED.labels(record.topic).inc()
        source = record_source(record.topic, record.partition, record.offset)
        outputs[source] = ([], [])
        parsed = kafka_io.parse_record(record, deployment_pattern=settings.deployment_pattern)
        refs.extend(parsed.refs)
        outputs[source][1].extend(parsed.failures)
        for event in parsed.events:
            if event.uploaded_at is not None and event.ref.source:
                on_uploaded_at(event.ref.source, event.uploaded_at)
    for batch in batches(refs, settings.batch_size):
        metrics.INFLIGHT_BATCHES.inc()
        try:
            output = pipeline.process(batch)
        finally:
            metrics.INFLIGHT_BATCHES.dec()
        metrics.observe_batch(output.stage_seconds, len(output.results), output.bytes_read)
        for result in output.results:
            outputs[result.ref.source or ""][0].append(result)
        for failure in output.failures:
            outputs[failure.source or ""][1].append(failure)
    for buffer, record in pending:
        buffer.done[record.offset] = outputs[
            record_source(record.topic, record.partition, record.offset)
        ]
