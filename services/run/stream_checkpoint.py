"""The stream's checkpoint: write what the partitions hold, dead-letter the refused, commit.

Exactly once, as kafka-delta-ingest does it. Every table remembers, per Kafka partition, the last
offset it holds: an application transaction (app id `trapline:<group>:<topic>:<partition>`,
version = that offset) carried by the commit that wrote the rows. A worker's checkpoint makes,
per table, ONE Delta commit for all the partitions it holds, with one transaction each, and per
partition it only ever writes the range that starts right after the table's version:

    version >= batch end        the table holds this range already (a replay): skip it
    version == batch start - 1  write it; the commit carries (app id, batch end)
    anything else               someone else moved this partition on: fenced, drop the batch

So each table's ranges for a partition form one gapless chain, and delta-rs makes the check and
the commit atomic: a commit is refused when a concurrent commit since our snapshot carried one of
our app ids (`ConcurrentCommit`), and we then decide again on the new snapshot. A zombie (a worker
that lost its partitions without knowing it) is fenced this way, whatever its Kafka state.

Tables are committed observations, events, failures, then media (`WRITE_ORDER`): a crash in
between leaves some tables ahead; on assignment the partition resumes after the lowest version
and replays exactly up to the highest (`resume_point`), skipping the tables already there.
Dead letters are sent, and acknowledged, before the failures commit that records them (a crash
in between sends them again: at least once on the DLQ topic, exactly once in the tables).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from trapline.pipelines import delta, delta_txn
from trapline.pipelines.flow import Tables, assemble
from trapline.pipelines.readers import KnownMedia
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import Failure, MediaResult
from trapline.pipelines.uploads import record_source
from trapline.services.adapters import kafka_io
from trapline.services.run import metrics
from trapline.services.settings import Settings

log = logging.getLogger(__name__)

MAX_COMMIT_ATTEMPTS = 20  # refused commits retried on a fresh snapshot (each one decides anew)


def app_id(group: str, topic: str, partition: int) -> str:
    """The Delta application id of one Kafka partition as read by one consumer group."""
    return f"trapline:{group}:{topic}:{partition}"


@dataclass
class Batch:
    """One partition's records [start, end], processed, ready to write."""

    topic: str
    partition: int
    start: int
    end: int
    records: list[Any]
    results: list[MediaResult]
    failures: list[Failure]
    # Offset ranges inside [start, end] the broker holds no record at (fetched twice).
    skipped: list[tuple[int, int]] = field(default_factory=list)
    # A table whose version is below `floor` - 1 continues at `start` = `floor`: Kafka's
    # committed offset was past every table at resume (the operator skipped those records).
    floor: int | None = None

    def continues(self, version: int | None) -> bool:
        """Whether a table whose version for this partition is `version` may take this batch
        next: its chain ends right before `start` (or below a floor this batch starts at)."""
        if version is None or version == self.start - 1:
            return True
        return self.floor == self.start and version < self.start - 1

    def check_gapless(self) -> None:
        """The records are exactly the offsets [start, end] less the confirmed empty ranges:
        a commit never claims an offset whose record it did not hold."""
        expected = self.start
        for record in self.records:
            while record.offset > expected:
                gap = next((g for g in self.skipped if g[0] == expected), None)
                if gap is None:
                    raise OffsetGap(
                        f"{self.topic}/{self.partition}: batch [{self.start}, {self.end}] lacks "
                        f"offset {expected} (next record {record.offset}); not committed"
                    )
                expected = gap[1] + 1
            if record.offset != expected:
                raise OffsetGap(
                    f"{self.topic}/{self.partition}: offset {record.offset} out of order in "
                    f"batch [{self.start}, {self.end}]; not committed"
                )
            expected += 1
        if self.records and self.records[-1].offset > self.end:
            raise OffsetGap(f"{self.topic}/{self.partition}: records past the batch's end")


class OffsetGap(RuntimeError):
    """A batch does not hold every record of the range it would claim: a bug upstream of the
    sink, refused here so that it costs a retry, never a photo."""


@dataclass
class Outcome:
    """What the checkpoint did with each batch, by (topic, partition)."""

    written: set[tuple[str, int]] = field(default_factory=set)  # every table holds it now
    fenced: set[tuple[str, int]] = field(default_factory=set)  # someone else moved it on
    media_rows: int = 0
    failure_rows: int = 0
    dead_letters: int = 0
    tables: dict[tuple[str, int], Tables] = field(default_factory=dict)


class DeadLetterUndelivered(RuntimeError):
    """The dead-letter topic did not acknowledge; nothing more is committed, the batch is retried."""


class Checkpointer:
    """Writes batches to the four Delta tables under `root` for consumer group `group`."""

    def __init__(
        self,
        root: str,
        settings: Settings,
        models: ModelNames,
        labels: tuple[str, ...],
        dead_letters: kafka_io.DeadLetter | None,
    ):
        self.root = root
        self.settings = settings
        self.stage_options = settings.stage_options()  # assemble()'s, built once
        self.group = settings.consumer_group
        self.models = models
        self.labels = labels
        self.dead_letters = dead_letters
        self.known = KnownMedia(root, settings.dedupe_memory_mb * 2**20 // 16)
        self._tables: dict[str, Any] = {}

    def table(self, name: str) -> Any:
        """The table's DeltaTable, created on first use, refreshed to the latest commit."""
        if name not in self._tables:
            self._tables[name] = delta.create_table(self.root, name)
        else:
            self._tables[name].update_incremental()
        return self._tables[name]

    def resume_points(
        self, partitions: Collection[tuple[str, int]], exact: bool = False
    ) -> dict[tuple[str, int], tuple[int | None, int | None]]:
        """Per (topic, partition): (first offset to read, exact end of the replay or None),
        from the tables' versions.

        (None, None) when no table holds anything of a partition yet: start from Kafka's
        committed offset (or the topic's start). A table that lacks the partition while
        others hold it (a crash after the very first table's commit) counts as -1. Each table's
        versions are read once for all `partitions`, the tables side by side: from the log
        directly (`pipelines/delta_txn.py`: flat with history), or with `exact` from delta-rs's
        snapshot, which the commits are decided on (after a fence).
        """
        apps = {key: app_id(self.group, *key) for key in partitions}
        with ThreadPoolExecutor(len(delta.WRITE_ORDER)) as pool:
            tables = list(
                pool.map(lambda name: self._versions(name, exact, apps.values()), delta.WRITE_ORDER)
            )
        points = {}
        for (topic, partition), app in apps.items():
            held = [versions[app] for versions in tables if app in versions]
            if not held:
                points[topic, partition] = (None, None)
                continue
            low = -1 if len(held) < len(tables) else min(held)
            high = max(held)
            points[topic, partition] = (low + 1, high if high > low else None)
        return points

    def _versions(self, name: str, exact: bool, apps: Iterable[str]) -> dict[str, int]:
        """{app id: version} of table `name`, for at least `apps` (those it holds)."""
        if not exact:
            versions = delta_txn.read_app_versions(delta.table_uri(self.root, name))
            if versions is not None:
                return versions
        table = self.table(name)
        return {app: v for app in apps if (v := delta.app_version(table, app)) is not None}

    def commit(self, batches: Sequence[Batch]) -> Outcome:
        """Write `batches` table by table (media last); see the module docstring.

        Raises a storage error or `DeadLetterUndelivered` when storage or the DLQ is away: what
        was committed stays committed, and calling again with the same batches finishes the
        rest (each table skips the ranges it holds).
        """
        outcome = Outcome()
        by_key = {(b.topic, b.partition): b for b in batches}
        for batch in batches:
            batch.check_gapless()
        for key, batch in by_key.items():
            outcome.tables[key] = assemble(
                batch.results,
                batch.failures,
                self.stage_options,
                self.models,
                self.labels,
                self.known.of,
            )
        sent_dead_letters: set[tuple[str, int]] = set()
        for name in delta.WRITE_ORDER:
            written = self._commit_table(name, by_key, outcome, sent_dead_letters)
            if name == "media":
                outcome.written = written
        for key in outcome.written:
            media = outcome.tables[key].media
            outcome.media_rows += media.num_rows
            outcome.failure_rows += outcome.tables[key].failures.num_rows
            self.known.add(media)
        return outcome

    def _commit_table(
        self,
        name: str,
        by_key: dict[tuple[str, int], Batch],
        outcome: Outcome,
        sent_dead_letters: set[tuple[str, int]],
    ) -> set[tuple[str, int]]:
        """One commit of `name` for every batch that is due in it; the batches it now holds."""
        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            table = self.table(name)
            write, held = [], set()
            for key, batch in by_key.items():
                if key in outcome.fenced:
                    continue
                version = delta.app_version(table, app_id(self.group, *key))
                if version is not None and version >= batch.end:
                    held.add(key)  # a replay: this table holds the range already
                    log.info(
                        "table %s already holds %s/%d up to offset %d: batch [%d, %d] skipped "
                        "there (a replay, or another worker wrote it)",
                        name, *key, version, batch.start, batch.end,
                    )  # fmt: skip
                elif batch.continues(version):
                    write.append(key)
                else:
                    self._fence(key, name, version, batch, outcome)
            if not write:
                return held
            if name == "failures":
                self._dead_letter([k for k in write if k not in sent_dead_letters], by_key, outcome)
                sent_dead_letters.update(write)
            data = pa.concat_tables([outcome.tables[key].as_dict()[name] for key in write])
            transactions = [
                delta.AppVersion(app_id(self.group, *key), by_key[key].end) for key in write
            ]
            started = time.perf_counter()
            try:
                delta.append(table, name, data, transactions, self.settings.output_compression)
            except delta.ConcurrentCommit as refused:
                log.warning(
                    "%s: commit refused (%s); deciding again on the new snapshot", name, refused
                )
                metrics.COMMITS_REFUSED.labels(name).inc()
                continue
            metrics.STAGE_SECONDS.labels("write").observe(time.perf_counter() - started)
            metrics.TABLE_COMMITS.labels(name).inc()
            metrics.BYTES_WRITTEN.inc(data.nbytes)
            return held | set(write)
        raise RuntimeError(
            f"{name}: {MAX_COMMIT_ATTEMPTS} commits refused in a row; giving up this round"
        )

    def _fence(
        self, key: tuple[str, int], name: str, version: int, batch: Batch, outcome: Outcome
    ) -> None:
        topic, partition = key
        log.warning(
            "partition %s/%d fenced: table %s holds it up to offset %d, this batch is [%d, %d]; "
            "another worker owns it now, dropping the batch",
            topic, partition, name, version, batch.start, batch.end,
        )  # fmt: skip
        metrics.BATCHES_FENCED.inc()
        outcome.fenced.add(key)
        self.known.forget({r.ref.deployment_id for r in batch.results})

    def _dead_letter(
        self,
        keys: list[tuple[str, int]],
        by_key: dict[tuple[str, int], Batch],
        outcome: Outcome,
    ) -> None:
        """Every failures row of an event has its DLQ record (the original message and the
        reason); waits for the broker's acknowledgement before the failures commit."""
        if self.dead_letters is None:
            return
        futures = []
        for key in keys:
            records = {
                record_source(r.topic, r.partition, r.offset): r for r in by_key[key].records
            }
            for failure in outcome.tables[key].failed:
                record = records.get(failure.source or "")
                if record is not None:
                    futures.append(self.dead_letters.send_record(record, failure))
        errors = kafka_io.wait_delivered(futures)
        if errors:
            raise DeadLetterUndelivered(f"dead-letter delivery failed: {errors[0]}; not committed")
        outcome.dead_letters += len(futures)
