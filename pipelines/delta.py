"""The result tables as Delta Lake tables: Parquet files plus a transaction log (delta-rs).

A table is `ROOT/<name>/` with its log in `_delta_log/`; a Parquet file is part of the table only
once a commit in the log adds it. So a reader that goes through the log (deltalake, Polars'
`read_delta`, Spark, DuckDB's delta extension, `pipelines/readers.py`) never sees a file that was
written but not committed, and a failed or refused commit leaves only an orphan file that VACUUM
removes later. Files are Hive-partitioned as before (`deployment_id=<id>/date=<YYYY-MM-DD>/`;
failures by deployment only), so readers that want one camera or one season open only those.

Exactly once rests on Delta's application transactions (SetTransaction): every commit can carry
(app id, version) pairs, the table remembers the last version per app id (also through
checkpoints), and delta-rs refuses a commit when a concurrent commit since its snapshot carried
one of the same app ids (`CommitFailedError`, "Concurrent transaction failed"). The stream uses
one app id per Kafka partition (version = last offset written, `services/run/delta_sink.py`);
folder runs one per deployment written (the same sink).

Object stores: delta-rs needs an atomic "create if absent" for the log's next version. Local
disks have it (hard link); on S3-compatible stores it is a conditional PUT (`If-None-Match: *`),
which AWS S3, MinIO and Ceph RGW (checked on 16.2) all support: `conditional_put=etag` below.
Without it two writers could both write version N and one commit would be lost; see
docs/operations.md for the DynamoDB locking alternative.
"""

from __future__ import annotations

import logging
import os
import posixpath
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

# delta-rs's Rust code allocates with its own jemalloc, configured by this variable (read once,
# at its first allocation: so before deltalake is imported). With jemalloc's default of keeping
# freed pages for 10 s, every OPTIMIZE and checkpoint left more resident memory behind: the folder
# driver's commit path alone (330 commits, merges every 50) climbed 215 -> 269 MB; returning
# freed pages at once keeps it at 208-218 MB (docs/performance.md, "Costs as the photos grow").
# An operator's own setting wins.
DELTA_RS_MALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
if "deltalake" not in sys.modules:
    os.environ.setdefault("_RJEM_MALLOC_CONF", DELTA_RS_MALLOC_CONF)

from deltalake import (  # noqa: E402  (after the allocator's setting above)
    CommitProperties,
    DeltaTable,
    PostCommitHookProperties,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError  # noqa: E402
from deltalake.transaction import AddAction, RemoveAction  # noqa: E402, F401 (pipelines/compaction.py)

from trapline.pipelines.tables import SCHEMA_VERSION, TABLES  # noqa: E402

log = logging.getLogger(__name__)

# Partition columns per table: a camera, then a capture day (UTC). A failure has no capture time.
PARTITION_BY: dict[str, list[str]] = {
    "media": ["deployment_id", "date"],
    "observations": ["deployment_id", "date"],
    "events": ["deployment_id", "date"],
    "failures": ["deployment_id"],
    "reviews": ["deployment_id"],  # people's reviews (pipelines/reviews.py), few and small
}
# Written last: a reader joining on media sees whole photos (their observations and events are
# committed before them). See docs/architecture.md for what one table alone may show.
WRITE_ORDER = ("observations", "events", "failures", "media")
# Table properties. A checkpoint every 10 commits (Delta's own default; delta-rs's is 100) bounds
# what an open or a resume replays: one Parquet checkpoint plus < 10 JSON commits
# (pipelines/delta_txn.py reads just those). At 100 the replay of up to 99 commits made opening a
# stream's tables 16 ms with 11 commits, 118 ms with 86 (docs/performance.md, "Costs as the photos
# grow"). delta-rs also LISTS the log folder when it opens a table, so opening grows with the
# entries kept on a local disk (10 ms at 10 entries, 53 ms at 9,800, 17 ms once cleaned). The
# log keeps 7 days, as long as VACUUM keeps replaced files: an older version cannot be read anyway.
# Set when a table is created: an older table keeps its interval (docs/operations.md says how to
# move it).
TABLE_CONFIGURATION = {
    "delta.checkpointInterval": "10",
    "delta.logRetentionDuration": "interval 7 days",
    "delta.deletedFileRetentionDuration": "interval 7 days",
}
# Min/max statistics only for the columns readers filter on beyond the partitions (times,
# taxa, confidence, failure kinds). delta-rs parses every live file's statistics on each commit
# and each open, so statistics on all ~25 columns doubled a commit's cost at 480 files
# (docs/performance.md); nothing else reads them.
STATS_COLUMNS: dict[str, list[str]] = {
    "media": ["timestamp", "observation_type", "processed_at"],
    "observations": ["timestamp", "scientific_name", "label_probability"],
    "events": ["start", "end", "scientific_name"],
    "failures": ["kind", "failed_at"],
    "reviews": ["reviewed_at"],
}
# Every this many versions of a table, the writer whose commit lands on a multiple merges the
# table's small files (OPTIMIZE), unless another compactor holds the compaction lease: then it
# skips, and a later one merges them (`compaction.compact_when_free`; two OPTIMIZEs at once would
# double rows, pipelines/compaction_lease.py). delta-rs's cost per commit and per open grows with
# the table's live files (~0.1 ms each), and a stream worker adds a few files per table every few
# seconds; merging keeps them near one per partition. Version-based, so one writer tries it,
# whichever it is, with no state of its own (as delta-rs does checkpoints).
COMPACT_EVERY_VERSIONS = 50


def _storage_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or failing store raises: OSError from local disks and fsspec,
    botocore's and aiohttp's own errors (not OSErrors) from s3fs, and delta-rs's DeltaError
    (an S3 error inside a write or a log read). A refused commit is not among them: `append`
    turns it into `ConcurrentCommit`, which is a decision, not an outage."""
    errors: list[type[BaseException]] = [OSError, DeltaError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # no S3 support installed: local disks only
        pass
    try:
        from aiohttp import ClientError as HttpClientError

        errors.append(HttpClientError)
    except ImportError:
        pass
    return tuple(errors)


STORAGE_ERRORS = _storage_errors()  # catch these to retry a write later, not to skip it


def use_lean_arrow_pool() -> str:
    """Give pyarrow's buffers to jemalloc (else the system allocator) instead of the wheel's
    default, mimalloc, unless ARROW_DEFAULT_MEMORY_POOL says otherwise; returns the pool's name.

    A process that commits for hours (a folder driver, a stream worker) reads and casts small
    tables at every commit, and mimalloc keeps what they freed: 330 commits of a folder run's
    driver path ended 39 MB higher with mimalloc than with jemalloc (329 against 290 MB; the
    system allocator 306), at the same speed (docs/performance.md, "Costs as the photos grow").
    Called when this module is imported, so every process that writes or reads tables has it.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name


use_lean_arrow_pool()

# After each commit: a checkpoint when one is due (every 10 versions), but no log cleanup. The
# cleanup lists the whole log to find expired commits (every commit, ~150 ms at 10,000 entries
# on a local disk); `trapline compact` runs it instead (`cleanup_metadata`), daily by default.
AFTER_COMMIT = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)

_s3_options: dict[str, str] = {}  # this process's delta-rs options for s3:// (set_s3_options)


def set_s3_options(options: Mapping[str, str] | None) -> None:
    """Use these delta-rs storage options for every `s3://` table this process opens.

    Per process, like fsspec's config (services/adapters/object_store.py calls this from
    `configure_fsspec`, with the endpoint, region and keys of the settings).
    """
    _s3_options.clear()
    _s3_options.update(options or {})


def storage_options(uri: str) -> dict[str, str]:
    """delta-rs options for `uri`: the S3 ones (with conditional put) for s3://, else none."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme not in ("s3", "s3a"):
        return {}
    return {"conditional_put": "etag", **_s3_options}


def table_uri(root: str, table: str) -> str:
    """`ROOT/<table>` as delta-rs wants it: a local path or a URL (s3a:// read as s3://)."""
    root = root.rstrip("/")
    if root.startswith("s3a://"):
        root = "s3://" + root[len("s3a://") :]
    if root.startswith("file://"):
        root = root[len("file://") :]
    return posixpath.join(root, table)


def open_table(root: str, table: str, version: int | None = None) -> DeltaTable | None:
    """The Delta table `table` under `root`, or None if nobody created it yet."""
    uri = table_uri(root, table)
    try:
        return DeltaTable(uri, version=version, storage_options=storage_options(uri))
    except TableNotFoundError:
        return None


def create_table(root: str, table: str) -> DeltaTable:
    """Open `table`, creating it (empty, with its schema and partitions) if it is absent.

    Two writers may create it at once: one wins the first log entry, the other opens it.
    """
    uri = table_uri(root, table)
    options = storage_options(uri)
    for _attempt in range(5):
        existing = open_table(root, table)
        if existing is not None:
            return existing
        if "://" not in uri:
            os.makedirs(uri, exist_ok=True)
        try:
            return DeltaTable.create(
                uri,
                TABLES[table],
                mode="ignore",
                partition_by=PARTITION_BY[table],
                name=table,
                # delta-rs refuses table properties it does not know: the version goes here.
                description=f"Trapline {table} table, schema version {SCHEMA_VERSION} (docs/tables/{table}.md)",
                configuration={
                    **TABLE_CONFIGURATION,
                    "delta.dataSkippingStatsColumns": ",".join(STATS_COLUMNS[table]),
                },
                storage_options=options,
            )
        except DeltaError as error:  # lost the race for version 0: the winner's table is there
            log.info("%s: created concurrently (%s); opening it", uri, error)
            time.sleep(0.1)
    raise RuntimeError(f"{uri}: cannot create or open the Delta table")


@dataclass(frozen=True, slots=True)
class AppVersion:
    """One application transaction: `app_id` has written everything up to `version`."""

    app_id: str
    version: int


class ConcurrentCommit(Exception):
    """Another writer committed one of our app ids since our snapshot: our commit was refused."""


def append(
    table: DeltaTable,
    name: str,
    data: pa.Table,
    transactions: Sequence[AppVersion] = (),
    compression: str = "zstd",
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Append `data` to `table` in one commit carrying `transactions`, against the snapshot
    `table` holds (refresh it with `update_incremental` first); returns the new version.

    Raises `ConcurrentCommit` when a commit since that snapshot carried one of the same app ids:
    the caller re-reads the versions and decides again (a zombie learns it was fenced). An
    empty `data` still commits the transactions: a partition's position moves on although none
    of its photos had, say, a failure. Every COMPACT_EVERY_VERSIONS versions it also merges the
    table's small files when the compaction lease is free (after the commit: the data is safe
    whatever happens to that; pipelines/compaction.py).
    """
    properties = CommitProperties(
        app_transactions=[Transaction(t.app_id, t.version) for t in transactions],
        custom_metadata=dict(metadata or {}),
    )
    try:
        write_deltalake(
            table,
            data.cast(TABLES[name]),
            mode="append",
            partition_by=PARTITION_BY[name],
            commit_properties=properties,
            writer_properties=WriterProperties(compression=codec(compression)),
            post_commithook_properties=AFTER_COMMIT,
        )
    except CommitFailedError as error:
        raise ConcurrentCommit(f"{table.table_uri}: {error}") from error
    version = table.version()
    if COMPACT_EVERY_VERSIONS and version % COMPACT_EVERY_VERSIONS == 0:
        from trapline.pipelines import compaction  # here: it builds on this module

        compaction.compact_when_free(table, compression)
    return version


def codec(compression: str) -> str:
    """Our setting's codec name as delta-rs spells it ("none" is "UNCOMPRESSED" there)."""
    return (
        "UNCOMPRESSED" if compression.lower() in ("none", "uncompressed") else compression.upper()
    )


def app_version(table: DeltaTable, app_id: str) -> int | None:
    """The last version `app_id` committed to `table` (in its current snapshot), None if none."""
    return table.transaction_version(app_id)


def checkpoint_heads(root: str) -> None:
    """Checkpoint each table under `root` at its latest version unless one is there already: a
    reader opening them after a batch of work reads one Parquet file a table, not up to 9
    commits after the last checkpoint (~0.5 ms each with delta-rs 1.6; 100,000 photos: the four
    tables open in 18 ms, not 27). Safe beside other writers (a checkpoint describes one
    version; a newer one wins). An outage only logs: the data is committed; the next checkpoint
    comes with a later commit."""
    for table in WRITE_ORDER:
        try:
            found = open_table(root, table)
            if found is None:
                continue
            interval = int(found.metadata().configuration.get("delta.checkpointInterval", "100"))
            if found.version() % interval != 0:  # else delta-rs checkpointed it after the commit
                found.create_checkpoint()
        except STORAGE_ERRORS as error:
            log.warning(
                "%s: no checkpoint at its latest version (%s)", table_uri(root, table), error
            )
