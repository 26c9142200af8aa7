"""Service mode: upload messages from Kafka -> the same stages -> Delta tables, each row exactly once.

One `StreamWorker` is one Kafka consumer in the group. Its loop polls, keeps each assigned
partition's records in a `PartitionBuffer` (services/run/stream_buffer.py), runs the stages on
them as soon as a model batch is there (`batch_size` records, or `batch_max_wait_s` after the
oldest), and, when a checkpoint is due (`batch_max_records` records in a partition, or
`commit_interval_s` since the oldest unwritten one), hands every partition's ready range to the
`DeltaSink` (services/run/delta_sink.py, shared with folder runs): one Delta commit per table, carrying each
partition's last offset as an application transaction, media last. Kafka's offsets are committed
after that, as advice only: on assignment a partition resumes from the tables' versions.

Rebalances: kafka-python calls the listener on its IO thread, where blocking consumer calls are
refused, so the callbacks only note the change and the loop applies it. A revoked partition's
ready range is written (the tables' versions settle any race with its new owner); a partition
that the tables show was moved on by someone else (fenced) is dropped and resumed from them.
With `partition_assignment=ordinal` there is no group protocol at all: worker slot i of N
assigns itself the partitions p with p % N == i (`OrdinalSlot`), so a restarted worker reads
at once and nothing rebalances; the tables' versions still decide what is written, so two
workers that believe they own one partition (N changing in a rolling update) are fenced like
a zombie, never duplicated.
Outages (models, storage, the dead-letter topic) are retried with capped backoff, never
dead-lettered: the photos are fine. The consumer and producer can be passed in, so a test can
drive a worker from an in-memory source.

Over 400 lines because it is one class, the worker's loop and its reactions to rebalances and
outages, which read best together; what the loop delegates is beside it: the buffer
(stream_buffer.py), the tables (delta_sink.py), where a partition starts
(partition_start.py), partition ownership
(membership.py), and the process that runs N workers (serve.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from trapline.errors import BackendUnavailable, StorageUnavailable
from trapline.pipelines.delta import STORAGE_ERRORS, checkpoint_heads
from trapline.pipelines.flow import PhotoPipeline
from trapline.pipelines.uploads import record_source
from trapline.services.adapters import kafka_io
from trapline.services.run import metrics
from trapline.services.run.delta_sink import (
    Batch,
    DeadLetterUndelivered,
    DeltaSink,
    OffsetGap,
    Outcome,
    SinkOptions,
    app_id,
)
from trapline.services.run.membership import member_id, ordinal_slot
from trapline.services.run.partition_start import refusal, start_buffers
from trapline.services.run.stream_buffer import (
    PartitionBuffer,
    held_records_limit,
    process_pending,
)
from trapline.services.settings import Settings

if TYPE_CHECKING:
    from kafka import TopicPartition

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY_S = 1.0  # an outage: first wait before retrying a checkpoint
MAX_RETRY_DELAY_S = 60.0
LAG_INTERVAL_S = 15.0  # how often consumer lag is read from the broker
PARTITIONS_INTERVAL_S = 30.0  # ordinal assignment: how often the topic's partitions are re-read


@dataclass
class WorkerStats:
    records: int = 0
    media_rows: int = 0
    failure_rows: int = 0
    dead_letters: int = 0
    checkpoints: int = 0
    fenced: int = 0  # partition batches dropped: the tables showed another writer ahead


class StreamWorker(kafka_io.RebalanceListener):
    def __init__(
        self,
        settings: Settings,
        out: str,
        pipeline: PhotoPipeline,
        clock: Callable[[], float] = time.monotonic,
        consumer: Any = None,
        producer: Any = None,
        index: int = 0,
    ):
        """`consumer` and `producer` default to real Kafka clients from `settings`; pass any
        objects with the same methods (poll, subscribe, seek, committed, commit, close;
        send, close) to drive the worker without a broker. `index` numbers the workers of one
        process (its static group member id, see `member_id`)."""
        self.settings = settings
        self.out = out
        self.pipeline = pipeline
        self.clock = clock
        self.buffers: dict[TopicPartition, PartitionBuffer] = {}
        self.stats = WorkerStats()
        self.stopping = False
        self._rebalance_lock = threading.Lock()
        self._revoked: set[TopicPartition] = set()
        self._assigned: set[TopicPartition] = set()
        self.retry_delay_s = FIRST_RETRY_DELAY_S
        self._retry_at = 0.0  # no checkpoint before this (backoff after an outage)
        # An outage in progress: (first failed checkpoint at, retries so far), for the log.
        self._outage: tuple[float, int] | None = None
        self._uploaded_at: dict[str, datetime] = {}  # source -> event's uploaded_at, until written
        self._refused: dict[TopicPartition, int] = {}  # topic behind the tables -> their offset
        self._unsent_offsets: dict[TopicPartition, int] = {}  # Kafka commits refused so far
        self._offsets_retry_at = 0.0
        self.slot = ordinal_slot(settings, index)  # None: the consumer group assigns
        self._owned: set[TopicPartition] = set()  # ordinal assignment: the partitions claimed
        self._owned_at = float("-inf")
        security = settings.kafka_security()
        self.producer = producer or kafka_io.make_producer(settings.kafka_bootstrap, **security)
        self.dead_letters = kafka_io.DeadLetter(self.producer, settings.dlq_topic)
        self.sink = DeltaSink(
            out, SinkOptions.from_settings(settings), pipeline.model_names,
            pipeline.classifier.spec.labels, self.dead_letters,
        )  # fmt: skip
        self.consumer = consumer or kafka_io.make_consumer(
            settings.kafka_bootstrap,
            settings.consumer_group,
            max_poll_records=settings.poll_max_records,
            session_timeout_ms=settings.session_timeout_ms,
            group_instance_id=member_id(settings, index) if self.slot is None else None,
            **security,
        )
        if self.slot is None:
            self.consumer.subscribe([settings.uploads_topic], listener=self)
        else:
            log.info(
                "fixed partition ownership: slot %d of %d reads the partitions p of %s with "
                "p %% %d == %d; no consumer group rebalances",
                self.slot.index, self.slot.count, settings.uploads_topic, self.slot.count,
                self.slot.index,
            )  # fmt: skip

    # -- the loop ---------------------------------------------------------------------------

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Consume until `stop()` (or `idle_exit_s` without records and nothing pending)."""
        last_record_at = last_lag_at = self.clock()
        try:
            while not self.stopping:
                if self.clock() - last_lag_at >= LAG_INTERVAL_S:
                    self._publish_lag()
                    last_lag_at = self.clock()
                if self._turn() or not self.buffers:  # not idle while waiting for partitions
                    last_record_at = self.clock()
                idle = self.clock() - last_record_at
                if idle_exit_s is not None and idle >= idle_exit_s and not self._pending():
                    break
            self.checkpoint(drain=True)
            checkpoint_heads(self.sink.root)  # whoever opens the tables next reads less
        finally:
            self.close()
        return self.stats

    def _turn(self) -> bool:
        """One turn of the loop: poll, rebalance, buffer, run the stages on a waiting batch,
        checkpoint when due, hold back full partitions. True if records came."""
        if self.slot is not None and self.clock() - self._owned_at >= PARTITIONS_INTERVAL_S:
            self._claim_partitions()
        # No wait for records while a batch is there to process.
        polled = self.consumer.poll(timeout_ms=0 if self._stages_due() else 200)
        assigned = self._apply_rebalance()
        for tp, records in polled.items():
            if tp not in assigned:  # else fetched from Kafka's offset, before the seek: again
                self._accept(tp, records)
        if self._stages_due():
            self._run_stages()
        if self._due():
            self.checkpoint()
        self._hold_back()
        self._retry_offsets()
        metrics.HELD_RECORDS.set(sum(len(b.records) for b in self.buffers.values()))
        return bool(polled)

    def stop(self) -> None:
        """Ask the loop to drain: write every buffer, commit, leave the group."""
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
            self.sink.table("media")
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
        return any(buffer.records for buffer in self.buffers.values())

    def _accept(self, tp: TopicPartition, records: list[Any]) -> None:
        buffer = self.buffers.get(tp)
        if buffer is None:  # revoked between poll and here
            return
        if tp in self._refused:
            return
        if records and records[0].offset < (
            buffer.probe if buffer.probe is not None else buffer.start
        ):
            self._refuse(tp, buffer, records[0].offset)  # the broker reset our position
            return
        kept, refetch_from = buffer.accept(records, self.clock())
        self.stats.records += kept
        if refetch_from is not None:  # a gap: ask again from the offset that must come next
            log.info(
                "partition %s/%d: offset %d did not come next; fetching again from it",
                tp.topic, tp.partition, refetch_from,
            )  # fmt: skip
            self.consumer.seek(tp, refetch_from)

    def _hold_back(self) -> None:
        """Stop fetching a partition that holds `held_records_limit` unwritten records, fetch
        again once a checkpoint wrote them: a backlog (slow models, an outage that stops every
        checkpoint) stays in the broker as lag, not in this process. A replay is never held
        short of `forced_end`, the range it must write whole."""
        limit = held_records_limit(self.settings)
        assigned = self.consumer.assignment()
        full = {
            tp
            for tp, b in self.buffers.items()
            if tp in assigned
            and len(b.records) >= limit
            and (b.forced_end is None or b.records[-1].offset >= b.forced_end)
        } | (set(self._refused) & assigned)
        paused = self.consumer.paused()
        if full - paused:
            self.consumer.pause(*(full - paused))
        if paused - full:
            kafka_io.resume_partitions(self.consumer, paused - full)

    def _stages_due(self) -> bool:
        """A model batch is waiting (`batch_size` records, or the oldest waited
        `batch_max_wait_s`). The stages run then, not when the commit is due: a worker that
        waited for its commit to fill before processing idled up to `commit_interval_s` (1,000
        photos at the shipped 5 s: 70 photos/s against 130)."""
        if self.clock() < self._retry_at:
            return False
        now = self.clock()
        count, oldest = 0, 0.0
        for buffer in self.buffers.values():
            waiting = buffer.unprocessed()
            if waiting:
                count += len(waiting)
                oldest = max(oldest, now - buffer.arrived[waiting[0].offset])
        return count >= self.settings.batch_size or (
            count > 0 and oldest >= self.settings.batch_max_wait_s
        )

    def _run_stages(self) -> None:
        """The stages on up to a model batch of each partition's new records: the loop comes
        back to poll and to checkpoint between batches."""
        try:
            process_pending(
                self.buffers.values(), self.pipeline, self.settings,
                self._uploaded_at.__setitem__, limit=self.settings.batch_size,
            )  # fmt: skip
        except (BackendUnavailable, StorageUnavailable) as error:
            self._stages_unavailable(error, owned=True)

    def _stages_unavailable(
        self, error: BackendUnavailable | StorageUnavailable, owned: bool
    ) -> None:
        """Models or the photos' store away (trapline/errors.py): the records wait, retried."""
        if isinstance(error, StorageUnavailable):  # photos unreadable for now, not failures
            self._retry_later("storage", error, owned)
            return
        metrics.MODEL_ERRORS.labels("pipeline", self.settings.model_backend).inc()
        self._retry_later("model backend", error, owned)

    def _due(self) -> bool:
        if self.clock() < self._retry_at:
            return False
        now = self.clock()
        return any(
            len(b.records) >= self.settings.batch_max_records
            or (b.records and b.waited(now) >= self.settings.commit_interval_s)
            or (b.forced_end is not None and b.records and b.records[-1].offset >= b.forced_end)
            for b in self.buffers.values()
        )

    # -- rebalances -------------------------------------------------------------------------

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        with self._rebalance_lock:
            self._revoked.update(revoked)
            self._assigned.difference_update(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        with self._rebalance_lock:
            self._assigned.update(assigned)
            self._revoked.difference_update(assigned)

    def _claim_partitions(self) -> None:
        """Ordinal assignment: assign this slot's partitions of the topic to the consumer; again
        every PARTITIONS_INTERVAL_S, to take partitions added to the topic (seen once the
        client's metadata refreshes, `metadata_max_age_ms`)."""
        self._owned_at = self.clock()
        topic = self.settings.uploads_topic
        try:
            partitions = self.consumer.partitions_for_topic(topic)
        except kafka_io.KafkaError as error:
            log.warning("partitions of %s unknown (%s); asking again", topic, error)
            self._owned_at -= PARTITIONS_INTERVAL_S - FIRST_RETRY_DELAY_S
            return
        if not partitions:
            log.warning("topic %s not found on the broker; asking again", topic)
            self._owned_at -= PARTITIONS_INTERVAL_S - FIRST_RETRY_DELAY_S
            return
        from kafka import TopicPartition

        assert self.slot is not None
        owned = {TopicPartition(topic, p) for p in partitions if self.slot.owns(p)}
        if owned == self._owned:
            return
        if not owned:
            log.warning(
                "slot %d of %d owns none of the %d partitions of %s: this worker idles "
                "(more workers than partitions)",
                self.slot.index, self.slot.count, len(partitions), topic,
            )  # fmt: skip
        self.consumer.assign(sorted(owned))  # keeps the positions of partitions already held
        self.on_partitions_assigned(owned - self._owned)
        self._owned = owned
        self._apply_rebalance()  # seek the new ones before the next poll fetches

    def _apply_rebalance(self) -> set[TopicPartition]:
        """Write what revoked partitions have ready; resume assigned ones from the tables.
        Returns the partitions assigned."""
        with self._rebalance_lock:
            revoked, self._revoked = self._revoked, set()
            assigned, self._assigned = self._assigned, set()
        if revoked:
            self.checkpoint(only=revoked & set(self.buffers), owned=False)
        for tp in revoked:
            self.buffers.pop(tp, None)
            self._refused.pop(tp, None)
            metrics.forget_partition(tp.topic, tp.partition)
        if assigned and not self._resume(assigned):
            with self._rebalance_lock:  # storage away: try again at the next poll
                self._assigned.update(assigned - self._revoked)
        metrics.PARTITIONS_REFUSED.set(len(self._refused))
        return assigned

    def _resume(self, partitions: set[TopicPartition], exact: bool = False) -> bool:
        """Start `partitions` where the tables say (services/run/partition_start.py); False to
        retry. `exact`: read them from the snapshot the commits are decided on (after a fence)."""
        try:
            buffers = start_buffers(self.sink, self.consumer, self._app, partitions, exact)
        except STORAGE_ERRORS as error:
            log.warning("%s: cannot read the tables' versions (%s); retrying", partitions, error)
            metrics.CHECKPOINT_RETRIES.labels("storage").inc()
            time.sleep(min(self.retry_delay_s, 5.0))
            return False
        self.sink.assign()  # another worker may have written their deployments meanwhile
        behind = {}
        for tp, buffer in buffers.items():
            self.buffers[tp] = buffer
            if buffer.probe is None and (buffer.kafka_committed or 0) < buffer.start:
                behind[tp] = buffer.start
            self.consumer.seek(tp, buffer.start if buffer.probe is None else buffer.probe)
            log.info(
                "partition %s/%d resumes at offset %d%s", tp.topic, tp.partition, buffer.start,
                f" (replays exactly to {buffer.forced_end}: some tables hold it)"
                if buffer.forced_end is not None else "",
                extra={"topic": tp.topic, "partition": tp.partition, "offset": buffer.start},
            )  # fmt: skip
        if behind:  # killed between the tables' commit and Kafka's: else the lag never reads 0
            self._commit_offsets(behind)
        return True

    def _app(self, tp: TopicPartition) -> str:
        """The partition's application id in the tables."""
        return app_id(self.settings.consumer_group, tp.topic, tp.partition)

    def _refuse(self, tp: TopicPartition, buffer: PartitionBuffer, first: int) -> None:
        """The topic's offsets are behind the tables' (re-created or moved): the partition is
        paused, nothing of it is processed, skipped or committed."""
        log.error(refusal(tp, buffer, first))
        self._refused[tp] = buffer.start - 1
        buffer.records.clear()
        self.consumer.pause(tp)
        metrics.PARTITIONS_REFUSED.set(len(self._refused))

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(
        self, drain: bool = False, only: set[TopicPartition] | None = None, owned: bool = True
    ) -> None:
        """Process what is new, write every partition's ready range, then commit offsets.

        `only`: just these partitions (revoked ones, `owned=False`: no Kafka commit, which the
        group would refuse). An outage puts everything back and retries later.
        """
        buffers = {tp: b for tp, b in self.buffers.items() if only is None or tp in only}
        try:
            process_pending(
                buffers.values(), self.pipeline, self.settings, self._uploaded_at.__setitem__,
                limit=None if drain else self.settings.batch_max_records,
            )  # fmt: skip
        except (BackendUnavailable, StorageUnavailable) as error:
            self._stages_unavailable(error, owned)
            return
        now = self.clock()
        batches: dict[TopicPartition, Batch] = {}
        for tp, buffer in buffers.items():
            end = buffer.ready_end(self.settings, now, drain=drain)
            if end is not None:
                records, results, failures = buffer.batch(end)
                batches[tp] = Batch(
                    self._app(tp), results, failures, buffer.start, end, records,
                    buffer.skipped_in(end), buffer.floor,
                )  # fmt: skip
        for tp in [tp for tp, batch in batches.items() if not self._gapless(tp, batch, owned)]:
            del batches[tp]
        if not batches:
            return
        try:
            outcome = self.sink.commit(list(batches.values()))
        except (*STORAGE_ERRORS, DeadLetterUndelivered) as error:
            cause = "dead-letter topic" if isinstance(error, DeadLetterUndelivered) else "storage"
            for tp, batch in batches.items():  # some tables may hold it now: retry it exactly
                self.buffers[tp].pin(batch.end)
            self._retry_later(cause, error, owned)
            return
        self.retry_delay_s = FIRST_RETRY_DELAY_S
        self._retry_at = 0.0
        if self._outage is not None:
            since, retries = self._outage
            log.info(
                "checkpoints succeed again after %.0f s and %d retries",
                self.clock() - since,
                retries,
            )
            self._outage = None
        self._settle(batches, outcome, owned)

    def _gapless(self, tp: TopicPartition, batch: Batch, owned: bool) -> bool:
        """False, with the partition read again from the tables, if `batch` lacks a record of
        its range (the buffer keeps runs gapless, so this is a guard, not a path)."""
        try:
            batch.check_gapless()
            return True
        except OffsetGap as error:
            log.error("%s; reading the partition again from the tables", error)
            self.buffers.pop(tp, None)
            if owned and not self._resume({tp}, exact=True):
                with self._rebalance_lock:
                    self._assigned.add(tp)
            return False

    def _settle(self, batches: dict[TopicPartition, Batch], outcome: Outcome, owned: bool) -> None:
        """Move written partitions on and commit their offsets; resume fenced ones."""
        offsets = {}
        for tp, batch in batches.items():
            if batch.app in outcome.written:
                self.buffers[tp].advance(batch.end)
                offsets[tp] = batch.end + 1
                self._observe_written(outcome.tables[batch.app], batch)
            elif batch.app in outcome.fenced:
                self.stats.fenced += 1
                self.buffers.pop(tp, None)
                if owned and not self._resume({tp}, exact=True):
                    with self._rebalance_lock:  # storage away: resume at the next poll
                        self._assigned.add(tp)
        if owned and offsets:
            self._commit_offsets(offsets)
        self.stats.checkpoints += 1
        self.stats.media_rows += outcome.media_rows
        self.stats.failure_rows += outcome.failure_rows
        self.stats.dead_letters += outcome.dead_letters
        metrics.CHECKPOINTS.inc()

    def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit Kafka's offsets (advice); a refused commit is kept and tried again every
        turn (`_retry_offsets`) until it lands or a later one replaces it: with no record left
        to read, nothing else would move the offset, and the lag would never read 0."""
        self._unsent_offsets.update(offsets)
        if kafka_io.commit_offsets(self.consumer, dict(self._unsent_offsets)):
            self._unsent_offsets.clear()

    def _retry_offsets(self) -> None:
        owned = self.consumer.assignment()
        for tp in [tp for tp in self._unsent_offsets if tp not in owned]:
            del self._unsent_offsets[tp]  # revoked: its new owner commits it
        if self._unsent_offsets and self.clock() >= self._offsets_retry_at:
            self._offsets_retry_at = self.clock() + FIRST_RETRY_DELAY_S
            self._commit_offsets({})

    def _retry_later(self, cause: str, error: BaseException, owned: bool) -> None:
        """An outage, not a bad input: keep every record and retry with capped backoff.

        Retries do not end in the dead-letter topic: the photos are fine, and giving up would
        lose them; /readyz and `trapline_checkpoint_retries_total` tell the operator instead.
        """
        metrics.CHECKPOINT_RETRIES.labels(cause).inc()
        if not owned:  # revoked meanwhile: the new owner processes these records
            log.warning(
                "%s unavailable (%s); revoked partitions left to their new owner", cause, error
            )
            return
        since, retries = self._outage or (self.clock(), 0)
        self._outage = (since, retries + 1)
        log.warning(
            "%s unavailable (%s); retrying in %.0f s (retry %d, failing for %.0f s; the records "
            "wait, nothing is written as failed)",
            cause, error, self.retry_delay_s, retries + 1, self.clock() - since,
        )  # fmt: skip
        self._retry_at = self.clock() + self.retry_delay_s
        self.retry_delay_s = min(self.retry_delay_s * 2, MAX_RETRY_DELAY_S)

    def _observe_written(self, tables: Any, batch: Batch) -> None:
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
        for record in batch.records:
            self._uploaded_at.pop(
                record_source(record.topic, record.partition, record.offset), None
            )

    def _publish_lag(self) -> None:
        """Lag per assigned partition from the broker's end offsets (wrong on Tansu, see DESIGN)."""
        assigned = list(self.buffers)
        if not assigned:
            return
        try:
            ends = self.consumer.end_offsets(assigned)
        except kafka_io.KafkaError as error:  # advisory: a broker outage must not stop the worker
            log.warning("consumer lag not published: %s", error)
            return
        metrics.publish_lag(
            metrics.consumer_lag(
                {(tp.topic, tp.partition): end for tp, end in ends.items()},
                {
                    (tp.topic, tp.partition): b.start + len(b.records)
                    for tp, b in self.buffers.items()
                },
            )
        )
