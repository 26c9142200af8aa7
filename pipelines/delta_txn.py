"""Application transaction versions read straight from a Delta log, at a cost that does not
grow with the table's history: how a stream worker finds where a partition resumes.

Opening a table with delta-rs lists the whole `_delta_log/` folder (on a local disk it also
stats every entry: 10 ms at 10 entries, 50+ ms at 10,000) and loads every file's `add` action
from the checkpoint. Resuming needs neither: the Delta protocol keeps the last version of each
app id in the `txn` column of the latest checkpoint, and later ones in the `txn` actions of the
JSON commits after it. So this reads `_last_checkpoint` (a small JSON), the checkpoint's `txn`
column only (a Parquet column), then asks for commit N+1, N+2, ... until one is absent: no
listing, and fewer than `delta.checkpointInterval` (10) commits read.

It is advice, like Kafka's committed offset, not the fence: `services/run/delta_sink.py`
decides every commit on delta-rs's own snapshot, so a version read here that is already stale
(another writer committed meanwhile) costs a replay that the commit skips or fences, never a
duplicate, and a fenced partition resumes from delta-rs's reading. Anything this reader does
not know (a v2 or missing checkpoint, a log that starts past version 0 without one, a commit
removed while it read) makes it return None, and the caller asks delta-rs instead.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec
import pyarrow.parquet as pq

PROBE_BATCH = 16  # commits asked for at once (concurrent GETs on an object store)


def read_app_versions(uri: str) -> dict[str, int] | None:
    """{app id: last version} of the Delta table at `uri`, or None when the log has a shape
    this reader leaves to delta-rs (including no table at all)."""
    fs, root = fsspec.core.url_to_fs(uri)
    log_dir = posixpath.join(root, "_delta_log")
    for _attempt in range(3):
        start = _last_checkpoint(fs, log_dir)
        if start is None:
            return None
        checkpoint_version, versions = start
        last = _replay_commits(fs, log_dir, checkpoint_version + 1, versions)
        if last < 0:
            # Neither a checkpoint nor a first commit: no table yet, or a log whose start was
            # cleaned up while its checkpoint pointer is missing. delta-rs tells them apart.
            return None
        # A newer checkpoint written meanwhile may come with a cleanup of the commits we were
        # about to read: then the chain stopped early, and we start again from that checkpoint.
        again = _last_checkpoint(fs, log_dir)
        if again is not None and again[0] <= last:
            return versions
    return None


def _last_checkpoint(fs: Any, log_dir: str) -> tuple[int, dict[str, int]] | None:
    """(checkpoint version or -1, its app versions); None for a checkpoint we do not read."""
    try:
        pointer = json.loads(fs.cat_file(posixpath.join(log_dir, "_last_checkpoint")))
    except FileNotFoundError:
        return -1, {}
    if "v2Checkpoint" in pointer or "version" not in pointer:
        return None
    version = int(pointer["version"])
    parts = int(pointer.get("parts") or 1)
    names = (
        [f"{version:020d}.checkpoint.parquet"]
        if parts == 1
        else [
            f"{version:020d}.checkpoint.{i:010d}.{parts:010d}.parquet" for i in range(1, parts + 1)
        ]
    )
    versions: dict[str, int] = {}
    for name in names:
        try:
            with fs.open(posixpath.join(log_dir, name), "rb") as handle:
                checkpoint = pq.ParquetFile(handle)
                if "txn" not in checkpoint.schema_arrow.names:
                    continue  # no app transaction was ever committed before this checkpoint
                column = checkpoint.read(columns=["txn"]).column("txn")
        except FileNotFoundError:  # the pointer names a checkpoint that is not there
            return None
        for txn in column.to_pylist():
            if txn is not None:
                versions[txn["appId"]] = int(txn["version"])
    return version, versions


def _replay_commits(fs: Any, log_dir: str, first: int, versions: dict[str, int]) -> int:
    """Apply the `txn` actions of commits `first`, `first`+1, ... to `versions` until a commit
    is absent; returns the last version read (`first` - 1 if none)."""
    version = first
    while True:
        paths = [_commit_path(log_dir, v) for v in range(version, version + PROBE_BATCH)]
        found = fs.cat(paths, on_error="return")
        for path in paths:
            body = found.get(path)
            if body is None or isinstance(body, FileNotFoundError):
                return version - 1
            if isinstance(body, BaseException):
                raise body
            for line in body.splitlines():
                if b'"txn"' in line:
                    txn = json.loads(line).get("txn")
                    if txn is not None:
                        versions[txn["appId"]] = int(txn["version"])
            version += 1


def _commit_path(log_dir: str, version: int) -> str:
    return posixpath.join(log_dir, f"{version:020d}.json")


def read_commits(uri: str, versions: range) -> dict[int, list[dict[str, Any]]]:
    """The actions of the JSON commits `versions` of the Delta table at `uri`, one dict per
    line (`{"add": {...}}`, `{"commitInfo": {...}}`, ...); a commit that is absent (not yet
    written, or cleaned up after the log retention) is left out. Read concurrently, without
    listing the log: what the compaction lease and the check after each OPTIMIZE read
    (pipelines/compaction_lease.py, pipelines/compaction.py)."""
    fs, root = fsspec.core.url_to_fs(uri)
    log_dir = posixpath.join(root, "_delta_log")
    paths = {version: _commit_path(log_dir, version) for version in versions}
    if not paths:
        return {}
    # s3fs sizes a file from its listing cache before a GET: a listing of the log cached before
    # a commit would hide that commit.
    fs.invalidate_cache(log_dir)
    found = fs.cat(list(paths.values()), on_error="return")
    commits: dict[int, list[dict[str, Any]]] = {}
    for version, path in paths.items():
        body = found.get(path)
        if body is None or isinstance(body, FileNotFoundError):
            continue
        if isinstance(body, BaseException):
            raise body
        commits[version] = [json.loads(line) for line in body.splitlines() if line.strip()]
    return commits
