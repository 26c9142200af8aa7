"""`trapline compact`: Delta OPTIMIZE (merge small files) and VACUUM (delete what no one reads).

The service commits every few seconds, so a busy season leaves thousands of small files that slow
every reader and every commit. The writers merge them every 50 versions of a table
(`delta.COMPACT_EVERY_VERSIONS`); this command merges whatever is left, and does what the
writers never do: VACUUM, and the log cleanup. OPTIMIZE rewrites each partition's small files into few large ones in one commit
that removes the old files from the table and adds the new ones: a reader going through the log
sees either version, never both or neither, and the rows are the same. It is safe while workers
write: their commits only add files, which never conflict with a compaction (delta-rs retries
it on the new snapshot), and a worker's exactly-once check reads application transactions,
which compaction leaves alone.

It also checkpoints each table and deletes log entries older than the log retention (7 days):
the workers' commits skip that cleanup, which lists the whole log (pipelines/delta.py).

The replaced files stay on storage, so older versions (time travel, a reader that opened the
table a moment ago) still read. VACUUM deletes them, and any orphan file of a refused or
crashed commit, once they are older than the retention; below 7 days it asks for
`--force-retention`: a reader or writer that holds an older snapshot would fail on a deleted
file, and every version older than the retention stops being readable.

VACUUM runs in delta-rs's `full` mode, which lists the table's folder. Its default (`lite`)
deletes only the removed files the snapshot still names, and a checkpoint drops a removal
once it is older than `delta.deletedFileRetentionDuration`, the same 7 days: on tables
checkpointed every few commits the daily VACUUM found almost none, and the replaced files
stayed on storage for good (tests/unit/test_compact.py). `full` deletes a file no version
names once it is older than the retention (by its removal time while the log still holds it,
else by its modification time), so a writer's file not yet committed stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trapline.pipelines import delta  # first: it sets delta-rs's allocator up
from trapline.pipelines.tables import TABLES

MIN_SAFE_RETENTION_HOURS = 7 * 24  # Delta's default deletedFileRetentionDuration


@dataclass
class CompactReport:
    tables: list[str] = field(default_factory=list)
    files_removed: int = 0  # small files replaced by OPTIMIZE
    files_added: int = 0
    partitions: int = 0
    vacuumed: int = 0  # files deleted by VACUUM


class RetentionTooShort(ValueError):
    """VACUUM below the safe retention would break readers holding older snapshots."""


def compact(
    root: str,
    tables: list[str] | None = None,
    target_size_mb: int = 128,
    vacuum_hours: float | None = None,
    force_retention: bool = False,
    compression: str = "zstd",
) -> CompactReport:
    """OPTIMIZE every table (or `tables`) under `root`; VACUUM too when `vacuum_hours` is given."""
    if vacuum_hours is not None and vacuum_hours < MIN_SAFE_RETENTION_HOURS and not force_retention:
        raise RetentionTooShort(
            f"vacuum retention {vacuum_hours:g} h is below {MIN_SAFE_RETENTION_HOURS} h: a reader "
            "or worker holding an older snapshot would fail on deleted files, and versions older "
            "than that stop being readable. Pass --force-retention if nothing reads older versions."
        )
    report = CompactReport()
    for name in tables or list(TABLES):
        table = delta.open_table(root, name)
        if table is None:
            continue
        metrics = table.optimize.compact(
            target_size=target_size_mb * 2**20,
            writer_properties=delta.WriterProperties(compression=delta.codec(compression)),
        )
        report.tables.append(name)
        report.files_removed += metrics.get("numFilesRemoved", 0)
        report.files_added += metrics.get("numFilesAdded", 0)
        report.partitions += metrics.get("partitionsOptimized", 0)
        if vacuum_hours is not None:
            deleted = table.vacuum(
                retention_hours=int(vacuum_hours),
                dry_run=False,
                enforce_retention_duration=not force_retention,
                full=True,  # lite misses the removals a checkpoint dropped (module docstring)
            )
            report.vacuumed += len(deleted)
        table.create_checkpoint()  # the next reader opens one file, not the commits since
        table.cleanup_metadata()  # log entries past delta.logRetentionDuration (7 days)
    return report
