"""Compaction: the only OPTIMIZE, run under the compaction lease and checked afterwards.

Why one place: deltalake 1.6.4 to 1.6.6 (1.6.3 refused it) let two OPTIMIZE commits that remove
the same files both succeed, and every row they both rewrote is then read twice
(docs/delta-rs-concurrent-optimize.md).
So every OPTIMIZE goes through `optimize`, which needs the lease (pipelines/compaction_lease.py):
a writer's every `delta.COMPACT_EVERY_VERSIONS` versions (`compact_when_free`, which skips when
another compactor holds it) and `trapline compact` (services/tools/compact.py).

Defence in depth, for a lease that failed (a clock that lies, an OPTIMIZE that outlived its
lease): after our OPTIMIZE commits, `optimize` reads the JSON commits between our snapshot and our
commit. If one of them removed a file ours removed too, both rewrote those rows and readers now
see them twice. Only the later of the two sees the other in its range, so only it repairs: one
commit that removes the files our OPTIMIZE added and adds back the files only ours removed
(their rows are in no other live file; their statistics are a row count, so no reader skips
them until the next OPTIMIZE), against the latest snapshot, so the appends since stay.
delta-rs's own RESTORE cannot do it: from our (no longer latest) version it is refused once an
append landed after it, and from the latest one it would undo those appends. The repair's
commit does not conflict-check its removes either (delta-rs 1.6.6, pinned in
tests/unit/test_delta_rs_behaviour.py), so it first checks that our files are untouched and
afterwards that no commit in between removed them; anything else raises `OverlapNotRepaired`.
Readers may see the doubled rows between the two commits (milliseconds); each overlap is logged
as an error and counted (`trapline_compaction_overlaps_total`, services/run/metrics.py).
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import unquote

from trapline.pipelines import delta, delta_txn  # delta first: it sets delta-rs's allocator up
from trapline.pipelines.compaction_lease import (
    CompactionLease,
    LeaseHeld,
    LeaseLost,
    holder_id,
)

log = logging.getLogger(__name__)

# Who counts overlaps, called with (table, "repaired" | "not_repaired"): pipelines/ keeps no
# metrics, and compaction runs inside `delta.append`, below any service, so the service's
# counter registers itself here (services/run/metrics.py, which every worker imports).
OverlapCounter = Callable[[str, str], None]
overlap_counters: list[OverlapCounter] = []
REPAIR_OF, REPAIR_ID = "trapline.repairOf", "trapline.repairId"  # on a repair's commit


@dataclass(frozen=True, slots=True)
class Optimized:
    """What one OPTIMIZE did."""

    files_removed: int
    files_added: int
    partitions: int
    version: int | None  # our OPTIMIZE commit; None when there was nothing to merge
    repaired_at: int | None = None  # the commit that undid a rewrite another OPTIMIZE made too


class OverlapNotRepaired(RuntimeError):
    """Two OPTIMIZEs rewrote the same files, and the rows they doubled could not be repaired."""


def optimize(
    table: delta.DeltaTable,
    lease: CompactionLease,
    compression: str = "zstd",
    target_size_mb: int = 128,
) -> Optimized:
    """OPTIMIZE `table` (merge each partition's small files) under `lease`, then check that no
    other commit removed the files ours removed, and repair if one did (module docstring).
    Raises `LeaseLost` (before merging) when the lease cannot be renewed."""
    lease.ensure()
    read_version = table.version()
    metrics = table.optimize.compact(
        target_size=target_size_mb * 2**20,
        writer_properties=delta.WriterProperties(compression=delta.codec(compression)),
        post_commithook_properties=delta.AFTER_COMMIT,
    )
    version = table.version()
    result = Optimized(
        metrics.get("numFilesRemoved", 0),
        metrics.get("numFilesAdded", 0),
        metrics.get("partitionsOptimized", 0),
        version if version != read_version else None,
    )
    if result.version is None:
        return result
    uri = location(table)
    overlap = removed_by_others(uri, read_version, version)
    if not overlap:
        return result
    name = posixpath.basename(uri)
    log.error(
        "%s: OPTIMIZE at version %d rewrote %d files that another commit since version %d also "
        "removed: their rows are read twice until repaired (was the compaction lease broken? "
        "a clock off, or an OPTIMIZE longer than the lease)",
        uri, version, len(overlap), read_version,
    )  # fmt: skip
    try:
        repaired = repair_overlap(uri, version, overlap)
    except Exception:
        _count_overlap(name, "not_repaired")
        raise
    _count_overlap(name, "repaired")
    log.error(
        "%s: OPTIMIZE at version %d undone at version %d: each row once", uri, version, repaired
    )
    return replace(result, repaired_at=repaired)


def compact_when_free(table: delta.DeltaTable, compression: str = "zstd") -> Optimized | None:
    """A writer's compaction: OPTIMIZE `table` if the lease is free, without waiting; None when
    skipped (another compactor holds the lease, an outage, the lease lost: the next compaction
    merges these files too). Never raises: the writer's commit is already safe."""
    lease = CompactionLease(table_root(table), holder_id("writer"))
    try:
        lease.take()
        return optimize(table, lease, compression)
    except LeaseHeld as held:
        log.info("%s: small files left for later: %s", table.table_uri, held)
    except (LeaseLost, *delta.STORAGE_ERRORS) as error:
        log.warning(
            "%s: merging small files skipped (%s); the next compaction will", table.table_uri, error
        )
    except Exception:  # noqa: BLE001 - the data is committed; its compaction must not undo that
        log.exception(
            "%s: merging small files failed (docs/operations.md, Compaction)", table.table_uri
        )
    finally:
        lease.release()
    return None


def removed_by_others(uri: str, read_version: int, version: int) -> set[str]:
    """The files our commit `version` removed that a commit after our snapshot `read_version`
    and before ours removed too (paths as the log writes them)."""
    commits = delta_txn.read_commits(uri, range(read_version + 1, version + 1))
    missing = [v for v in range(read_version + 1, version + 1) if v not in commits]
    if missing:
        raise OverlapNotRepaired(
            f"{uri}: commits {missing} are gone; cannot check the OPTIMIZE at version {version}"
        )
    ours = _removed(commits.pop(version))
    return ours & set().union(*map(_removed, commits.values()))


def repair_overlap(uri: str, version: int, overlap: set[str]) -> int:
    """Undo commit `version` but for the files only it removed (module docstring); returns the
    repairing commit's version. Raises `OverlapNotRepaired` when the files moved meanwhile."""
    ours = delta_txn.read_commits(uri, range(version, version + 1))[version]
    added = [a["add"] for a in ours if "add" in a]
    only_ours = [a["remove"] for a in ours if "remove" in a and a["remove"]["path"] not in overlap]
    options = delta.storage_options(uri)
    before = delta.DeltaTable(uri, version=version - 1, storage_options=options).get_add_actions()
    records = dict(zip(before.column("path").to_pylist(), before.column("num_records").to_pylist()))
    if any("partitionValues" not in r or "size" not in r for r in only_ours):
        raise OverlapNotRepaired(
            f"{uri}: version {version}'s removes lack partition values or sizes"
        )
    for _attempt in range(5):
        latest = delta.DeltaTable(uri, storage_options=options)
        live = set(latest.get_add_actions().column("path").to_pylist())
        if any(a["path"] not in live for a in added) or any(r["path"] in live for r in only_ours):
            raise OverlapNotRepaired(
                f"{uri}: the files of the OPTIMIZE at version {version} changed since (another "
                f"compaction?); rows may be read twice: compare its rows with version {version - 1}"
            )
        now = int(time.time() * 1000)
        # delta-rs takes a path as it is on storage and escapes it for the log itself.
        actions: list[delta.AddAction | delta.RemoveAction] = [
            delta.RemoveAction(
                unquote(a["path"]), True, now, a.get("size"), a.get("partitionValues")
            )
            for a in added
        ]
        for r in only_ours:
            count = records.get(r["path"])  # no min/max: a reader never skips the file
            stats = json.dumps({} if count is None else {"numRecords": count})
            actions.append(
                delta.AddAction(
                    unquote(r["path"]), r["size"], r["partitionValues"], now, True, stats
                )
            )
        read, token = latest.version(), uuid.uuid4().hex
        try:
            latest.create_write_transaction(
                actions,
                "append",
                latest.schema(),
                latest.metadata().partition_columns,
                commit_properties=delta.CommitProperties(
                    custom_metadata={REPAIR_OF: str(version), REPAIR_ID: token}
                ),
                post_commithook_properties=delta.AFTER_COMMIT,
            )
        except delta.CommitFailedError:  # e.g. the table's metadata changed: decide again
            continue
        repaired = _find_commit(uri, read, token)  # the table object keeps its old version
        after = delta.DeltaTable(uri, version=repaired, storage_options=options).get_add_actions()
        live = set(after.column("path").to_pylist())
        undone = not any(a["path"] in live for a in added)
        if not undone or not all(r["path"] in live for r in only_ours):
            raise OverlapNotRepaired(f"{uri}: the repair at version {repaired} did not take")
        if removed_by_others(uri, read, repaired):
            raise OverlapNotRepaired(
                f"{uri}: another commit removed the files the repair at version {repaired} "
                f"removed (OPTIMIZE at version {version}); rows may be read twice"
            )
        return repaired
    raise OverlapNotRepaired(
        f"{uri}: the repair of the OPTIMIZE at version {version} kept being refused"
    )


def _find_commit(uri: str, after: int, token: str) -> int:
    """The version of the commit after `after` that carries our repair's token."""
    latest = delta.DeltaTable(uri, storage_options=delta.storage_options(uri)).version()
    for version, actions in delta_txn.read_commits(uri, range(after + 1, latest + 1)).items():
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        if info.get(REPAIR_ID) == token:
            return version
    raise OverlapNotRepaired(f"{uri}: the repair's commit is not in the log after version {after}")


def location(table: delta.DeltaTable) -> str:
    """`table`'s URI as fsspec and delta-rs open it again (delta-rs percent-encodes it)."""
    uri = unquote(table.table_uri.rstrip("/"))
    return uri[len("file://") :] if uri.startswith("file://") else uri


def table_root(table: delta.DeltaTable) -> str:
    """The results root `table` lives in: where its compaction lease is."""
    return posixpath.dirname(location(table))


def _count_overlap(table: str, outcome: str) -> None:
    for count in overlap_counters:
        count(table, outcome)


def _removed(commit: list[dict]) -> set[str]:
    return {a["remove"]["path"] for a in commit if "remove" in a}
