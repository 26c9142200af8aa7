"""Service mode: upload events from Kafka -> the same stages -> tables, each row exactly once.

One `StreamWorker` is one Kafka consumer in the group. Per assigned partition it gathers records
into a *segment* (contiguous offsets), and when the segment is due (`segment_max_records` or
`segment_max_wait_s`) it runs the pipeline on it, sends refused inputs to the dead-letter topic,
writes the four tables, and only then commits the partition's offset.

Exactly once, against crashes and zombies, rests on the store, not on Kafka: the segment log
(`pipelines/segment_log.py`) claims each segment's range before processing, the table files are
created only if absent, and a commit record is written once they are all durable. On assignment
a worker resumes after the partition's last commit, whatever Kafka's committed offset says, and
replays a claimed but uncommitted range exactly (a crash between write and commit loses nothing
and duplicates nothing; a zombie that lost the partition adopts the range its successor
claimed). `media_id`s in the partition's commits are refused as duplicates (the message key is
the deployment, so a photo's repeats land in the same partition).
Events (sequences) are grouped within a segment, and a deployment's last event is held out of
the segment until no photo joined it for `sequence_hold_s`: a burst is not cut by a segment
boundary, and the events and their ids are those of a folder run of the same photos. A burst
longer than 4 x `segment_max_records` records is cut anyway (memory and latency stay bounded).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from trapline.models.backend import BackendUnavailable
from trapline.pipelines.batching import batches
from trapline.pipelines.deployments import cached_deployments
from trapline.pipelines.events import record_source
from trapline.pipelines.flow import PhotoPipeline, Tables, assemble, resolve_timestamp
from trapline.pipelines.segment_log import Commit, SegmentLog, part_name
from trapline.pipelines.sequences import SequenceItem, last_sequences
from trapline.pipelines.sinks import STORAGE_ERRORS, ParquetSink
from trapline.pipelines.types import Failure, MediaResult
from trapline.services import kafka_io, metrics
from trapline.services.settings import Settings

if TYPE_CHECKING:
    from kafka import TopicPartition

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY_S = 1.0  # model backend down: first wait before retrying a segment
MAX_RETRY_DELAY_S = 60.0
LAG_INTERVAL_S = 15.0  # how often consumer lag is read from the broker
WRITE_ORDER = ("observations", "events", "failures", "media")


@dataclass
class Segment:
    """The unwritten records of one partition, from `first` on."""

    first: int  # first offset not yet in storage
    records: list[Any] = field(default_factory=list)
    opened_at: float = 0.0
    forced_end: int | None = None  # a claim says the segment ends here
    seen: set[str] = field(default_factory=set)  # media_ids already written for this partition
    done: dict[int, tuple[list[MediaResult], list[Failure]]] = field(
        default_factory=dict
    )  # processed, unwritten
    arrived: dict[int, float] = field(default_factory=dict)  # offset -> when it was polled (clock)


@dataclass
class WorkerStats:
    records: int = 0
    media_rows: int = 0
    failure_rows: int = 0
    dead_letters: int = 0
    segments: int = 0
    adopted_claims: int = 0  # segments whose range someone else had claimed first


class StreamWorker(kafka_io.RebalanceListener):
    def __init__(
        self,
        settings: Settings,
        out: str,
        pipeline: PhotoPipeline,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.pipeline = pipeline
        self.sink = ParquetSink(out, settings.output_compression)
        self.log = SegmentLog(self.sink.fs, self.sink.root)
        self.clock = clock
        self.models = pipeline.model_names
        self.labels = pipeline.classifier.spec.labels
        self.segments: dict[TopicPartition, Segment] = {}
        self.stats = WorkerStats()
        self.stopping = False
        self._rebalance_lock = threading.Lock()
        self._revoked: set[TopicPartition] = set()
        self._assigned: set[TopicPartition] = set()
        self.retry_delay_s = FIRST_RETRY_DELAY_S
        self._uploaded_at: dict[str, datetime] = {}  # source -> event's uploaded_at, until written
        security = settings.kafka_security()
        self.producer = kafka_io.make_producer(settings.kafka_bootstrap, **security)
        self.dead_letters = kafka_io.DeadLetter(self.producer, settings.dlq_topic)
        self.consumer = kafka_io.make_consumer(
            settings.kafka_bootstrap,
            settings.consumer_group,
            [settings.uploads_topic],
            max_poll_records=settings.poll_max_records,
            session_timeout_ms=settings.session_timeout_ms,
            listener=self,
            **security,
        )

    # -- the loop ---------------------------------------------------------------------------

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Consume until `stop()` (or `idle_exit_s` without records and nothing pending)."""
        last_record_at = last_lag_at = self.clock()
        try:
            while not self.stopping:
                if self.clock() - last_lag_at >= LAG_INTERVAL_S:
                    self._publish_lag()
                    last_lag_at = self.clock()
                polled = self.consumer.poll(timeout_ms=200)
                self._apply_rebalance()
                if not self.segments:  # not idle while waiting for the group to assign partitions
                    last_record_at = self.clock()
                for tp, records in polled.items():
                    self._accept(tp, records)
                    last_record_at = self.clock()
                for tp in list(self.segments):
                    if self._due(tp):
                        self._flush(tp)
                idle = self.clock() - last_record_at
                if idle_exit_s is not None and idle >= idle_exit_s and not self._pending():
                    break
            for tp in list(self.segments):
                self._flush(tp, drain=True)
        finally:
            self.close()
        return self.stats

    def stop(self) -> None:
        """Ask the loop to drain: flush every segment, commit, leave the group."""
        self.stopping = True

    def readiness(self) -> dict[str, bool]:
        """For /readyz: can this worker reach its broker, its storage and its models?"""
        checks = {"models": self.pipeline is not None}
        try:
            kafka_io.list_topics(
                self.settings.kafka_bootstrap, timeout_s=3, **self.settings.kafka_security()
            )
            checks["broker"] = True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            checks["broker"] = False
        try:
            self.sink.fs.makedirs(self.sink.root, exist_ok=True)
            self.sink.fs.ls(self.sink.root)
            checks["storage"] = True
        except Exception:  # noqa: BLE001
            checks["storage"] = False
        return checks

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        finally:
            self.producer.close(timeout=10)

    def _pending(self) -> bool:
        return any(segment.records for segment in self.segments.values())

    # -- rebalances -------------------------------------------------------------------------
    # kafka-python 3 calls these on its IO thread, where blocking consumer calls are refused;
    # they only note the change, and the poll loop applies it (`_apply_rebalance`).

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        with self._rebalance_lock:
            self._revoked.update(revoked)
            self._assigned.difference_update(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        with self._rebalance_lock:
            self._assigned.update(assigned)
            self._revoked.difference_update(assigned)

    def _apply_rebalance(self) -> None:
        """Write what revoked partitions gathered; resume assigned ones from storage.

        A revoked partition may already be someone else's, so its last segment is written the
        way a zombie's would be: under the segment log's claim (ours, or the new owner's range if
        they claimed first), without a Kafka commit, which the group would refuse anyway.
        """
        with self._rebalance_lock:
            revoked, self._revoked = self._revoked, set()
            assigned, self._assigned = self._assigned, set()
        for tp in revoked:
            if tp in self.segments:
                self._flush(tp, owned=False)
                self.segments.pop(tp, None)
            metrics.forget_partition(tp.topic, tp.partition)
        for tp in assigned:
            try:
                self.segments[tp] = self._restore(tp)
            except STORAGE_ERRORS as error:
                # No segment, so records polled meanwhile are ignored; try again next poll.
                log.warning("%s: cannot read the segment log (%s); retrying", tp, error)
                metrics.SEGMENT_RETRIES.labels("storage").inc()
                with self._rebalance_lock:
                    if tp not in self._revoked:
                        self._assigned.add(tp)
                time.sleep(min(self.retry_delay_s, 5.0))
                continue
            self.consumer.seek(tp, self.segments[tp].first)

    def _restore(self, tp: TopicPartition) -> Segment:
        """Where this partition resumes, from the segment log (not from Kafka's commit)."""
        self.sink.fs.invalidate_cache()  # listings cached by this process may be stale
        commits = self.log.commits(tp.topic, tp.partition)
        if commits:
            first = commits[-1].last_offset + 1
        else:
            first = self.consumer.committed(tp) or 0
        seen = {key for commit in commits for key in (*commit.media_ids, *commit.sha256s)}
        segment = Segment(first=first, seen=seen)
        segment.forced_end = self.log.open_claim(tp.topic, tp.partition, first)
        if segment.forced_end is not None:  # claimed, never committed: replay that exact range
            self.stats.adopted_claims += 1
        log.info(
            "partition %s resumes at offset %d (%d media ids known, claim to %s)",
            tp, first, len(seen), segment.forced_end,
        )  # fmt: skip
        return segment

    # -- segments ---------------------------------------------------------------------------

    def _accept(self, tp: TopicPartition, records: list[Any]) -> None:
        segment = self.segments.get(tp)
        if segment is None:  # revoked between poll and here
            return
        for record in records:
            if record.offset < segment.first or (
                segment.records and record.offset <= segment.records[-1].offset
            ):
                continue  # already written, or already gathered (a replay after a seek)
            if segment.forced_end is not None and record.offset > segment.forced_end:
                self._flush(tp)  # the claimed range ends before this record (offsets may skip)
                segment = self.segments[tp]
            if not segment.records:
                segment.opened_at = self.clock()
            segment.records.append(record)
            segment.arrived[record.offset] = self.clock()
            self.stats.records += 1
            if (segment.forced_end is not None and record.offset >= segment.forced_end) or (
                segment.forced_end is None
                and len(segment.records) >= self.settings.segment_max_records
            ):  # full: write it now, so a burst gives rows every segment, not after the burst
                self._flush(tp)
                segment = self.segments[tp]

    def _due(self, tp: TopicPartition) -> bool:
        segment = self.segments[tp]
        if not segment.records:
            return False
        if segment.forced_end is not None:
            return segment.records[-1].offset >= segment.forced_end
        waited = self.clock() - segment.opened_at
        return (
            len(segment.records) >= self.settings.segment_max_records
            or waited >= self.settings.segment_max_wait_s
        )

    def _flush(self, tp: TopicPartition, owned: bool = True, drain: bool = False) -> None:
        """Process, claim, write, commit one segment; `owned=False` for a revoked partition.

        Records whose photos belong to a deployment's last event are held back while that event
        may still grow (`sequence_hold_s`), so a burst is never cut by a segment boundary; their
        results are kept, not recomputed. A drain, a revoked partition or a claimed range
        writes everything it has.
        """
        segment = self.segments[tp]
        if not segment.records:
            return
        try:
            self._process_pending(segment)
        except BackendUnavailable as error:
            self._retry_later(tp, [], "model backend", error, owned)  # the records stay
            metrics.MODEL_ERRORS.labels("pipeline", self.settings.model_backend).inc()
            return
        first, last = segment.records[0].offset, segment.records[-1].offset
        end = last
        if owned and not drain and segment.forced_end is None:
            end = self._end_before_open_events(segment)
            if end < first:  # every record is in an event that may still grow: wait
                return
        try:
            claimed = self.log.claim(tp.topic, tp.partition, first, end)
        except STORAGE_ERRORS as error:
            self._retry_later(tp, [], "storage", error, owned)  # the records stay where they are
            return
        if claimed > last:  # someone claimed a longer range: gather up to its end first
            if owned:
                segment.forced_end = claimed
                self.stats.adopted_claims += 1
            return
        if claimed != end:
            self.stats.adopted_claims += 1
        records = [r for r in segment.records if r.offset <= claimed]
        segment.records = [r for r in segment.records if r.offset > claimed]
        last = claimed
        by_source = {record_source(r.topic, r.partition, r.offset): r for r in records}
        results, failures = [], []
        for record in records:
            done_results, done_failures = segment.done[record.offset]
            results += done_results
            failures += done_failures
        fresh, duplicates = [], []
        for (
            result
        ) in results:  # seen holds media ids and sha256s: the same bytes under a new id too
            if result.media_id in segment.seen or result.sha256 in segment.seen:
                duplicates.append(result)
            else:
                fresh.append(result)
        failures += [_duplicate(result) for result in duplicates]
        tables = assemble(fresh, failures, self.settings, self.models, self.labels)

        name = part_name(tp.topic, tp.partition, first)
        metadata = {"first_offset": str(first), "last_offset": str(last)}
        write_started = time.perf_counter()
        try:
            files = []
            for table in WRITE_ORDER:
                files += self.sink.create(table, tables.as_dict()[table], name, metadata)
            self._dead_letter(tables.failed, by_source)  # before the commit: a replay resends
            media_ids = tables.media.column("media_id").to_pylist()
            sha256s = tables.media.column("sha256").to_pylist()
            self.log.commit(tp.topic, tp.partition, Commit(first, last, files, media_ids, sha256s))
        except (*STORAGE_ERRORS, DeadLetterUndelivered) as error:
            # Storage full or away, or the DLQ unreachable: nothing is committed, and the claim
            # makes the retry write the same range into the same names.
            self._retry_later(
                tp,
                records,
                "dead-letter topic" if isinstance(error, DeadLetterUndelivered) else "storage",
                error,
                owned,
            )
            return
        self.retry_delay_s = FIRST_RETRY_DELAY_S
        metrics.STAGE_SECONDS.labels("write").observe(time.perf_counter() - write_started)
        metrics.BYTES_WRITTEN.inc(self.sink.take_bytes_written())
        if owned:
            kafka_io.commit_offset(self.consumer, tp, last + 1)
        self._observe_written(tables, by_source)
        segment.first = last + 1
        segment.forced_end = None
        for record in records:
            segment.done.pop(record.offset, None)
            segment.arrived.pop(record.offset, None)
        segment.seen.update(media_ids)
        segment.seen.update(sha256s)
        self.stats.segments += 1
        self.stats.media_rows += tables.media.num_rows
        self.stats.failure_rows += tables.failures.num_rows

    def _retry_later(
        self, tp: TopicPartition, records: list[Any], cause: str, error: BaseException, owned: bool
    ) -> None:
        """An outage, not a bad input: put the segment back and retry it with capped backoff.

        Retries do not end in the dead-letter topic: the photos are fine, and giving up would
        lose them; /readyz and `trapline_segment_retries_total` tell the operator instead.
        """
        metrics.SEGMENT_RETRIES.labels(cause).inc()
        if not owned:  # revoked meanwhile: the new owner processes these records
            log.warning(
                "%s: %s unavailable (%s); revoked, leaving it to the new owner", tp, cause, error
            )
            return
        log.warning(
            "%s: %s unavailable (%s); retrying in %.0f s", tp, cause, error, self.retry_delay_s
        )
        segment = self.segments[tp]
        segment.records = records + segment.records
        segment.opened_at = self.clock() + self.retry_delay_s - self.settings.segment_max_wait_s
        self.retry_delay_s = min(self.retry_delay_s * 2, MAX_RETRY_DELAY_S)

    def _observe_written(self, tables: Tables, by_source: dict[str, Any]) -> None:
        metrics.SEGMENTS_WRITTEN.inc()
        metrics.observe_tables(
            tables.media.column("observation_type").to_pylist(),
            list(
                zip(
                    tables.failures.column("stage").to_pylist(),
                    tables.failures.column("kind").to_pylist(),
                )
            ),
        )
        now = datetime.now(timezone.utc)
        for source in tables.media.column("source").to_pylist():
            uploaded_at = self._uploaded_at.pop(source, None)
            if uploaded_at is not None:
                metrics.END_TO_END_SECONDS.observe(max(0.0, (now - uploaded_at).total_seconds()))
        for source in by_source:
            self._uploaded_at.pop(source, None)

    def _publish_lag(self) -> None:
        """Lag per assigned partition from the broker's end offsets (wrong on Tansu, see DESIGN)."""
        assigned = list(self.segments)
        if not assigned:
            return
        ends = self.consumer.end_offsets(assigned)
        metrics.publish_lag(
            metrics.consumer_lag(
                {(tp.topic, tp.partition): end for tp, end in ends.items()},
                {
                    (tp.topic, tp.partition): seg.first + len(seg.records)
                    for tp, seg in self.segments.items()
                },
            )
        )

    def _process_pending(self, segment: Segment) -> None:
        """Parse the events not processed yet and run the stages on them in model-sized
        batches; results are kept per offset until written."""
        pending = [r for r in segment.records if r.offset not in segment.done]
        if not pending:
            return
        refs, outputs = [], {r.offset: ([], []) for r in pending}
        offset_of = {record_source(r.topic, r.partition, r.offset): r.offset for r in pending}
        for record in pending:
            metrics.EVENTS_CONSUMED.labels(record.topic).inc()
            parsed = kafka_io.parse_record(
                record, deployment_pattern=self.settings.deployment_pattern
            )
            refs.extend(parsed.refs)
            outputs[record.offset][1].extend(parsed.failures)
            for event in parsed.events:
                if event.uploaded_at is not None and event.ref.source:
                    self._uploaded_at[event.ref.source] = event.uploaded_at
        for batch in batches(refs, self.settings.batch_size):
            metrics.INFLIGHT_BATCHES.inc()
            try:
                output = self.pipeline.process(batch)
            finally:
                metrics.INFLIGHT_BATCHES.dec()
            metrics.observe_batch(output.stage_seconds, len(output.results), output.bytes_read)
            for result in output.results:
                outputs[offset_of[result.ref.source or ""]][0].append(result)
            for failure in output.failures:
                outputs[offset_of[failure.source or ""]][1].append(failure)
        segment.done.update(outputs)

    def _end_before_open_events(self, segment: Segment) -> int:
        """The last offset that can be written now: just before the first record whose photo
        is in a deployment's last event, if that event got a photo within `sequence_hold_s`."""
        last = segment.records[-1].offset
        hold = self.settings.sequence_hold_s
        if hold <= 0 or len(segment.records) >= 4 * self.settings.segment_max_records:
            return last  # a burst this long is cut anyway: memory and latency stay bounded
        deployments = cached_deployments(self.settings.deployments_file)
        default_tz = self.settings.tzinfo()
        items, offset_of = [], {}
        for record in segment.records:
            for result in segment.done[record.offset][0]:
                when = resolve_timestamp(result, deployments, default_tz)[0]
                item = SequenceItem(result.media_id, result.ref.deployment_id, when, [])
                items.append(item)
                offset_of[id(item)] = record.offset
        now, newest, members = self.clock(), {}, defaultdict(list)
        for item in last_sequences(items, self.settings.sequence_gap_s):
            offset = offset_of[id(item)]
            members[item.deployment_id].append(offset)
            arrived = segment.arrived.get(offset, now)
            newest[item.deployment_id] = max(newest.get(item.deployment_id, arrived), arrived)
        held = [o for d, offsets in members.items() if now - newest[d] < hold for o in offsets]
        return min(held) - 1 if held else last

    def _dead_letter(self, failures: list[Failure], by_source: dict[str, Any]) -> None:
        """Every failures row of an event (duplicates included) has its DLQ record: the
        original message and the reason. Waits for delivery before the caller commits."""
        futures = []
        for failure in failures:
            record = by_source.get(failure.source or "")
            if record is not None:
                futures.append(self.dead_letters.send_record(record, failure))
        errors = kafka_io.wait_delivered(futures)
        if errors:
            raise DeadLetterUndelivered(
                f"dead-letter delivery failed: {errors[0]}; offsets not committed"
            )
        self.stats.dead_letters += len(futures)


class DeadLetterUndelivered(RuntimeError):
    """The dead-letter topic did not acknowledge; the segment is retried, not committed."""


def _duplicate(result: MediaResult) -> Failure:
    return Failure(
        uri=result.ref.uri,
        deployment_id=result.ref.deployment_id,
        media_id=result.media_id,
        stage="dedupe",
        kind="duplicate",
        message=f"{result.ref.uri}: media_id {result.media_id} is already in the tables; not written again",
        source=result.ref.source,
    )


class StreamActor:
    """A Ray actor around one StreamWorker. Threaded (max_concurrency=2) so that `stop` can
    reach it while `run` loops."""

    def __init__(self, settings: Settings, out: str, index: int):
        from trapline.services.runner import build_pipeline

        self.worker = StreamWorker(settings, out, build_pipeline(settings))
        if settings.metrics_port:
            metrics.HealthServer(settings.metrics_port + index, self.worker.readiness).start()

    def run(self) -> WorkerStats:
        return self.worker.run()

    def stop(self) -> None:
        self.worker.stop()


def serve(settings: Settings, out: str) -> list[WorkerStats]:
    """`trapline serve`: `workers` consumers (Ray actors; 0 = one in this process) until SIGTERM.

    SIGTERM or SIGINT asks every worker to drain: finish and write its segments, commit, leave
    the group. Give the pod a termination grace period longer than one segment's processing.
    """
    import signal

    from trapline.services.object_store import configure_fsspec

    configure_fsspec(settings)
    if settings.workers == 0:
        from trapline.services.runner import build_pipeline

        worker = StreamWorker(settings, out, build_pipeline(settings))
        if settings.metrics_port:
            metrics.HealthServer(settings.metrics_port, worker.readiness).start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        return [worker.run()]

    import ray

    from trapline.services.runner import start_local_ray

    start_local_ray(settings)
    actor_class = ray.remote(num_cpus=settings.threads_per_worker, max_concurrency=2)(StreamActor)
    actors = [actor_class.remote(settings, out, index) for index in range(settings.workers)]
    running = [actor.run.remote() for actor in actors]

    def drain(*_: Any) -> None:
        log.info("draining %d workers", len(actors))
        for actor in actors:
            actor.stop.remote()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, drain)
    return ray.get(running)
