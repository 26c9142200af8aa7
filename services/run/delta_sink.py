"""The one way rows reach the result tables: the Delta sink of folder runs and stream workers.

A source hands the sink batches, one per partition: a Kafka partition's records [start, end]
(the stream), or a deployment's photos (a folder run, whose partitions are deployments). The
sink owns everything after that, the same for both:

- assembling the rows (`pipelines/flow.assemble`: duplicates, time, events, post-processing)
  against the duplicate index (`KnownMedia`), which `assign` empties whenever partitions are
  (re)assigned: another writer may have written their deployments meanwhile;
- one Delta commit per table, in the order observations, events, failures, media (media last:
  a reader joining on media sees whole photos), for every batch of the checkpoint at once;
- the application transactions that make it exactly once, and the decision per table:

  a ranged batch (a Kafka partition; app id `trapline:<group>:<topic>:<partition>`, version =
  the last offset written), as kafka-delta-ingest does it:

      version >= batch end        the table holds this range already (a replay): skip it
      version == batch start - 1  write it; the commit carries (app id, batch end)
      anything else               someone else moved this partition on: fenced, drop the batch

  so each table's ranges for a partition form one gapless chain (`Batch.continues`; a batch
  also has to hold every record of its range, `Batch.check_gapless`);

  a keyed batch (a folder's deployment; app id `trapline-run:<digest of the deployment>`,
  version = a counter): rows whose key the table holds already (media_id, observation_id,
  event_id, failed uri) are left out, and the commit carries (app id, version + 1), so two runs
  writing one deployment at once conflict and the loser filters again;

- refusals: delta-rs refuses a commit when a commit since its snapshot carried one of its app
  ids (`delta.ConcurrentCommit`); the sink decides again on the new snapshot;
- dead letters (a stream's refused inputs), sent and acknowledged before the failures commit
  that records them (a crash in between sends them again: at least once on the DLQ topic,
  exactly once in the tables);
- resume points (`resume_points`): per ranged partition, where the tables say it starts.

Outages (storage, the dead-letter topic) raise: what was committed stays committed, and calling
`commit` again with the same batches finishes the rest (each table skips what it holds). The
caller retries exactly those batches (`PartitionBuffer.pin`). The drivers keep only what
differs: where records come from and when a run ends (services/run/stream.py, folder.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from trapline.pipelines import delta, delta_txn
from trapline.pipelines.flow import Tables, assemble
from trapline.pipelines.options import StageOptions
from trapline.pipelines.readers import KnownMedia, read_table
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import Failure, MediaResult
from trapline.pipelines.uploads import record_source
from trapline.services.adapters import kafka_io
from trapline.services.run import metrics

log = logging.getLogger(__name__)

MAX_COMMIT_ATTEMPTS = 20  # refused commits retried on a fresh snapshot (each one decides anew)
# A keyed batch's rows are told apart by these columns (a row whose key a table holds is left out).
KEY = {
    "media": "media_id",
    "observations": "observation_id",
    "events": "event_id",
    "failures": "uri",
}


def app_id(group: str, topic: str, partition: int) -> str:
    """The Delta application id of one Kafka partition as read by one consumer group."""
    return f"trapline:{group}:{topic}:{partition}"


def deployment_app_id(deployment_id: str | None) -> str:
    """The Delta application id under which folder runs commit one deployment's rows (named
    after the deployment, not the input folder: `photos` and `./photos`, or two card dumps of
    one camera, must conflict)."""
    digest = hashlib.sha256(f"{deployment_id or ''}".encode()).hexdigest()[:24]
    return f"trapline-run:{digest}"


class OffsetGap(RuntimeError):
    """A batch does not hold every record of the range it would claim: a bug upstream of the
    sink, refused here so that it costs a retry, never a photo."""


class DeadLetterUndelivered(RuntimeError):
    """The dead-letter topic did not acknowledge; nothing more is committed, the batch is retried."""


@dataclass
class Batch:
    """One partition's processed rows, ready to write: a ranged batch (`start`/`end` offsets
    of a Kafka partition, with its `records`) or a keyed one (`start` None: a deployment)."""

    app: str  # the partition's application id
    results: list[MediaResult]
    failures: list[Failure]
    start: int | None = None
    end: int | None = None
    records: list[Any] = field(default_factory=list)
    # Offset ranges inside [start, end] the broker holds no record at (fetched twice).
    skipped: list[tuple[int, int]] = field(default_factory=list)
    # A table whose version is below `floor` - 1 continues at `start` = `floor`: Kafka's
    # committed offset was past every table at resume (the operator skipped those records).
    floor: int | None = None

    @property
    def ranged(self) -> bool:
        return self.start is not None

    def continues(self, version: int | None) -> bool:
        """Whether a table whose version for this partition is `version` may take this batch
        next: its chain ends right before `start` (or below a floor this batch starts at)."""
        assert self.start is not None
        if version is None or version == self.start - 1:
            return True
        return self.floor == self.start and version < self.start - 1

    def check_gapless(self) -> None:
        """The records are exactly the offsets [start, end] less the confirmed empty ranges:
        a commit never claims an offset whose record it did not hold."""
        if self.start is None or self.end is None:
            return
        expected = self.start
        for record in self.records:
            while record.offset > expected:
                gap = next((g for g in self.skipped if g[0] == expected), None)
                if gap is None:
                    raise OffsetGap(
                        f"{self.app}: batch [{self.start}, {self.end}] lacks offset {expected} "
                        f"(next record {record.offset}); not committed"
                    )
                expected = gap[1] + 1
            if record.offset != expected:
                raise OffsetGap(
                    f"{self.app}: offset {record.offset} out of order in batch "
                    f"[{self.start}, {self.end}]; not committed"
                )
            expected += 1
        if self.records and self.records[-1].offset > self.end:
            raise OffsetGap(f"{self.app}: records past the batch's end")


@dataclass
class Outcome:
    """What the sink did with each batch, by app id."""

    written: set[str] = field(default_factory=set)  # every table holds it now
    fenced: set[str] = field(default_factory=set)  # someone else moved it on
    media_rows: int = 0
    failure_rows: int = 0
    dead_letters: int = 0
    tables: dict[str, Tables] = field(default_factory=dict)  # the rows each batch added


@dataclass(frozen=True)
class SinkOptions:
    """The sink's slice of the settings."""

    stages: StageOptions  # assemble()'s options
    compression: str = "zstd"  # Parquet codec
    dedupe_ids: int = 4_000_000  # media ids and sha256s the duplicate index holds at most

    @classmethod
    def from_settings(cls, settings: Any) -> SinkOptions:
        return cls(
            settings.stage_options(),
            settings.output_compression,
            settings.dedupe_memory_mb * 2**20 // 16,
        )


class DeltaSink:
    """Writes batches to the Delta tables under `root` (see the module docstring)."""

    def __init__(
        self,
        root: str,
        options: SinkOptions,
        models: ModelNames | None,
        labels: tuple[str, ...],
        dead_letters: kafka_io.DeadLetter | None = None,
    ):
        self.root = root
        self.options = options
        self.models = models
        self.labels = labels
        self.dead_letters = dead_letters
        self.known = KnownMedia(root, options.dedupe_ids)
        self._tables: dict[str, Any] = {}

    def assign(self) -> None:
        """Partitions were (re)assigned: read their deployments' known photos again."""
        self.known.clear()

    def release(self, deployments: Iterable[str]) -> None:
        """These deployments are done with (a folder run finished them): free their ids."""
        self.known.forget(deployments)

    def table(self, name: str) -> Any:
        """The table's DeltaTable, created on first use, refreshed to the latest commit."""
        if name not in self._tables:
            self._tables[name] = delta.create_table(self.root, name)
        else:
            self._tables[name].update_incremental()
        return self._tables[name]

    # -- resuming ---------------------------------------------------------------------------

    def resume_points(
        self, apps: Collection[str], exact: bool = False
    ) -> dict[str, tuple[int | None, int | None]]:
        """Per ranged app id: (first offset to read, exact end of the replay or None), from the
        tables' versions.

        (None, None) when no table holds anything of it yet. A table that lacks it while others
        hold it (a crash after the very first table's commit) counts as -1. Each table's
        versions are read once for all `apps`, the tables side by side: from the log directly
        (`pipelines/delta_txn.py`: flat with history), or with `exact` from delta-rs's
        snapshot, which the commits are decided on (after a fence).
        """
        with ThreadPoolExecutor(len(delta.WRITE_ORDER)) as pool:
            tables = list(
                pool.map(lambda name: self._versions(name, exact, apps), delta.WRITE_ORDER)
            )
        points: dict[str, tuple[int | None, int | None]] = {}
        for app in apps:
            held = [versions[app] for versions in tables if app in versions]
            if not held:
                points[app] = (None, None)
                continue
            low = -1 if len(held) < len(tables) else min(held)
            high = max(held)
            points[app] = (low + 1, high if high > low else None)
        return points

    def _versions(self, name: str, exact: bool, apps: Iterable[str]) -> dict[str, int]:
        """{app id: version} of table `name`, for at least `apps` (those it holds)."""
        if not exact:
            versions = delta_txn.read_app_versions(delta.table_uri(self.root, name))
            if versions is not None:
                return versions
        table = self.table(name)
        return {app: v for app in apps if (v := delta.app_version(table, app)) is not None}

    # -- committing -------------------------------------------------------------------------

    def commit(self, batches: Sequence[Batch]) -> Outcome:
        """Assemble each batch's rows and write them table by table (media last)."""
        if self.models is None:
            raise ValueError("the sink needs the models' names to assemble rows")
        assembled = {}
        for batch in batches:
            batch.check_gapless()
            assembled[batch.app] = assemble(
                batch.results,
                batch.failures,
                self.options.stages,
                self.models,
                self.labels,
                self.known.of,
            )
        return self.write(batches, assembled)

    def write(self, batches: Sequence[Batch], assembled: dict[str, Tables]) -> Outcome:
        """Write rows already assembled (`assembled[batch.app]`); see `commit`."""
        outcome = Outcome()
        by_app = {batch.app: batch for batch in batches}
        added: dict[str, dict[str, pa.Table]] = {app: {} for app in by_app}
        sent_dead_letters: set[str] = set()
        for name in delta.WRITE_ORDER:
            written = self._commit_table(name, by_app, assembled, added, outcome, sent_dead_letters)
            if name == "media":
                outcome.written = written
        for app in outcome.written:
            rows = added[app]
            failed_uris = set(rows["failures"].column("uri").to_pylist())
            tables = Tables(
                media=rows["media"],
                observations=rows["observations"],
                events=rows["events"],
                failures=rows["failures"],
                failed=[f for f in assembled[app].failed if f.uri in failed_uris],
            )
            outcome.tables[app] = tables
            outcome.media_rows += tables.media.num_rows
            outcome.failure_rows += tables.failures.num_rows
            self.known.add(tables.media)
        return outcome

    def _commit_table(
        self,
        name: str,
        by_app: dict[str, Batch],
        assembled: dict[str, Tables],
        added: dict[str, dict[str, pa.Table]],
        outcome: Outcome,
        sent_dead_letters: set[str],
    ) -> set[str]:
        """One commit of `name` for every batch that is due in it; the batches it now holds."""
        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            table = self.table(name)
            write, held, rows, transactions = [], set(), [], []
            for app, batch in by_app.items():
                if app in outcome.fenced:
                    continue
                version = delta.app_version(table, app)
                if not batch.ranged:  # keyed: leave out the rows the table holds
                    write.append(app)
                    rows.append(self._without_known_keys(name, assembled[app].as_dict()[name]))
                    transactions.append(delta.AppVersion(app, (version or 0) + 1))
                elif version is not None and version >= batch.end:
                    held.add(app)  # a replay: this table holds the range already
                    added[app][name] = assembled[app].as_dict()[name].slice(0, 0)
                    log.info(
                        "table %s already holds %s up to offset %d: batch [%d, %d] skipped "
                        "there (a replay, or another worker wrote it)",
                        name, app, version, batch.start, batch.end,
                    )  # fmt: skip
                elif batch.continues(version):
                    write.append(app)
                    rows.append(assembled[app].as_dict()[name])
                    transactions.append(delta.AppVersion(app, batch.end))
                else:
                    self._fence(app, name, version, batch, outcome)
            if not write:
                return held
            if name == "failures":
                self._dead_letter(
                    [a for a in write if a not in sent_dead_letters], by_app, assembled, outcome
                )
                sent_dead_letters.update(write)
            data = pa.concat_tables(rows)
            started = time.perf_counter()
            try:
                delta.append(table, name, data, transactions, self.options.compression)
            except delta.ConcurrentCommit as refused:
                log.warning(
                    "%s: commit refused (%s); deciding again on the new snapshot", name, refused
                )
                metrics.COMMITS_REFUSED.labels(name).inc()
                continue
            metrics.STAGE_SECONDS.labels("write").observe(time.perf_counter() - started)
            metrics.TABLE_COMMITS.labels(name).inc()
            metrics.BYTES_WRITTEN.inc(data.nbytes)
            for app, part in zip(write, rows):
                added[app][name] = part
            return held | set(write)
        raise RuntimeError(
            f"{name}: {MAX_COMMIT_ATTEMPTS} commits refused in a row; giving up this round"
        )

    def _without_known_keys(self, name: str, data: pa.Table) -> pa.Table:
        """`data` less the rows whose key the table holds (a keyed batch's replay or a
        concurrent run's commit). Only the keys being written are read back: the deployment's
        other keys (25,000 by the end of a long one) would be read at every commit for nothing."""
        if data.num_rows == 0:
            return data
        key = KEY[name]
        deployment_ids = data.column("deployment_id").to_pylist()
        deployments = sorted({d for d in deployment_ids if d is not None})
        where = pc.field("deployment_id").isin(deployments)
        if len(deployments) < len(set(deployment_ids)):
            where = where | pc.field("deployment_id").is_null()
        where = where & pc.field(key).isin(data.column(key).drop_null().unique())
        known = read_table(self.root, name, columns=[key], filter=where).column(key)
        if len(known) == 0:
            return data
        return data.filter(pc.invert(pc.is_in(data.column(key), value_set=known)))

    def _fence(self, app: str, name: str, version: int, batch: Batch, outcome: Outcome) -> None:
        log.warning(
            "partition %s fenced: table %s holds it up to offset %d, this batch is [%d, %d]; "
            "another worker owns it now, dropping the batch",
            app, name, version, batch.start, batch.end,
        )  # fmt: skip
        metrics.BATCHES_FENCED.inc()
        outcome.fenced.add(app)
        self.known.forget({r.ref.deployment_id for r in batch.results})

    def _dead_letter(
        self,
        apps: list[str],
        by_app: dict[str, Batch],
        assembled: dict[str, Tables],
        outcome: Outcome,
    ) -> None:
        """Every failures row of an event has its DLQ record (the original message and the
        reason); waits for the broker's acknowledgement before the failures commit."""
        if self.dead_letters is None:
            return
        futures = []
        for app in apps:
            records = {
                record_source(r.topic, r.partition, r.offset): r for r in by_app[app].records
            }
            for failure in assembled[app].failed:
                record = records.get(failure.source or "")
                if record is not None:
                    futures.append(self.dead_letters.send_record(record, failure))
        errors = kafka_io.wait_delivered(futures)
        if errors:
            raise DeadLetterUndelivered(f"dead-letter delivery failed: {errors[0]}; not committed")
        outcome.dead_letters += len(futures)
