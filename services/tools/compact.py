"""`trapline compact`: Delta OPTIMIZE (merge small files) and VACUUM (delete what no one reads).

The service commits every few seconds, so a busy season leaves thousands of small files that slow
every reader and every commit. The writers merge them every 50 versions of a table
(`delta.COMPACT_EVERY_VERSIONS`); this command merges whatever is left, and does what the
writers never do: VACUUM, and the log cleanup. OPTIMIZE rewrites each partition's small files
into few large ones in one commit that removes the old files from the table and adds the new
ones: a reader going through the log sees either version, never both or neither, and the rows
are the same.

It is safe while workers write because it holds the compaction lease for the whole run
(pipelines/compaction_lease.py): the workers' commits only add files, which never conflict with
an OPTIMIZE (delta-rs retries it on the new snapshot), and the workers' own OPTIMIZEs, the one
thing that would (deltalake 1.6.4+ lets two OPTIMIZEs rewrite the same files, doubling their
rows), wait for the lease: a worker skips its compaction while we hold it. When another
compactor holds it, `compact` raises `LeaseHeld` naming the holder and its expiry (or waits up
to `wait` for it). Every OPTIMIZE is then checked for an overlap that a broken lease let through
(pipelines/compaction.py). A worker's exactly-once check reads application transactions, which
compaction leaves alone.

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
stayed on storage for good (tests/unit/test_compact.py). `full` deletes a file the snapshot
does not name once it is older than the retention (by its removal time while the log still
holds it, else by its modification time). So it reads the table again after OPTIMIZE (with the
snapshot from before, it took the files committed since for orphans), and whatever the flags
it never deletes a file modified or removed less than `VACUUM_FLOOR_HOURS` (1 hour) ago: not a
writer's file being written or committed after the snapshot, not a file a reader of a
minute-old snapshot is reading (a writer that took longer than that from writing a file to
committing it would lose it; ours write and commit in one call). delta-rs takes whole hours, so
the retention is rounded up, never down: `--vacuum 0.5` keeps files for an hour, `--vacuum
168.2` for 169 hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta

from trapline.pipelines import delta  # first: it sets delta-rs's allocator up
from trapline.pipelines.compaction import optimize
from trapline.pipelines.compaction_lease import DEFAULT_TTL, CompactionLease, holder_id
from trapline.pipelines.tables import TABLES

MIN_SAFE_RETENTION_HOURS = 7 * 24  # Delta's default deletedFileRetentionDuration
VACUUM_FLOOR_HOURS = 1.0  # VACUUM never deletes a file modified or removed more recently


@dataclass
class CompactReport:
    tables: list[str] = field(default_factory=list)
    files_removed: int = 0  # small files replaced by OPTIMIZE
    files_added: int = 0
    partitions: int = 0
    vacuumed: int = 0  # files deleted by VACUUM
    repaired: list[str] = field(default_factory=list)  # tables whose OPTIMIZE overlapped another's


class RetentionTooShort(ValueError):
    """VACUUM below the safe retention would break readers holding older snapshots."""


def vacuum_retention_hours(hours: float) -> int:
    """The whole hours delta-rs's VACUUM gets for `hours`: never under the floor, rounded up."""
    return math.ceil(max(hours, VACUUM_FLOOR_HOURS))


def compact(
    root: str,
    tables: list[str] | None = None,
    target_size_mb: int = 128,
    vacuum_hours: float | None = None,
    force_retention: bool = False,
    compression: str = "zstd",
    wait: timedelta = timedelta(0),
    lease_ttl: timedelta = DEFAULT_TTL,
) -> CompactReport:
    """OPTIMIZE every table (or `tables`) under `root`, holding the compaction lease; VACUUM
    too when `vacuum_hours` is given. Raises `LeaseHeld` when another compactor holds the
    lease after `wait`, `LeaseLost` when it ran out between two tables."""
    if vacuum_hours is not None and vacuum_hours < MIN_SAFE_RETENTION_HOURS and not force_retention:
        raise RetentionTooShort(
            f"vacuum retention {vacuum_hours:g} h is below {MIN_SAFE_RETENTION_HOURS} h: a reader "
            "or worker holding an older snapshot would fail on deleted files, and versions older "
            "than that stop being readable. Pass --force-retention if nothing reads older versions."
        )
    report = CompactReport()
    lease = CompactionLease(root, holder_id("trapline compact"), ttl=lease_ttl)
    lease.take(wait=wait)
    try:
        for name in tables or list(TABLES):
            table = delta.open_table(root, name)
            if table is None:
                continue
            merged = optimize(table, lease, compression, target_size_mb)
            report.tables.append(name)
            report.files_removed += merged.files_removed
            report.files_added += merged.files_added
            report.partitions += merged.partitions
            if merged.repaired_at is not None:
                report.repaired.append(name)
            # Read again: VACUUM deletes what its snapshot does not name, so the snapshot from
            # before OPTIMIZE would take the files committed since for orphans.
            table = delta.open_table(root, name) or table
            if vacuum_hours is not None:
                deleted = table.vacuum(
                    retention_hours=vacuum_retention_hours(vacuum_hours),
                    dry_run=False,
                    enforce_retention_duration=not force_retention,
                    full=True,  # lite misses the removals a checkpoint dropped (module docstring)
                )
                report.vacuumed += len(deleted)
            table.create_checkpoint()  # the next reader opens one file, not the commits since
            table.cleanup_metadata()  # log entries past delta.logRetentionDuration (7 days)
    finally:
        lease.release()
    return report
