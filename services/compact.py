"""`trapline compact`: merge each partition folder's small part files into one.

The service writes one file per segment and partition folder, so a busy season leaves thousands
of small files that slow every reader. Compaction rewrites a folder's files as one file, sorted
by time, with the same rows.

Readers must never see a folder half-compacted (rows missing, or rows twice):
- on a local or network disk the merged file is built in a hidden sibling folder, and the two
  folders are swapped in one step (`renameat2(RENAME_EXCHANGE)`, Linux >= 3.15), so a reader
  lists either the old files or the new one. A file that a writer added during the merge is
  noticed after the swap and the swap is undone (again atomic), and the folder is retried.
- object stores have no atomic multi-object operation. By default compaction there writes a
  compacted copy into a new root (`--out`): nothing readers see changes until they are
  pointed at it (an archived season, a hand-over to analysts). In place it needs
  `--allow-brief-duplicates`: the merged file is written first and the inputs deleted after
  it, so a plain reader listing in between sees those rows twice. The merged file names its
  inputs in its metadata, and `read_table` (exports, report, API) drops any input still listed,
  so Trapline's own readers never do. `--min-age` limits it to quiet folders.
Only complete part files are merged; the segment log is not touched (its records keep offsets
and media ids, not file contents), so the stream's exactly-once resumption is unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import posixpath
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from trapline.pipelines.readers import visible_part_files
from trapline.pipelines.sinks import PART_PREFIX, ParquetSink
from trapline.pipelines.tables import TABLES

log = logging.getLogger(__name__)

COMPACTED_PREFIX = f"{PART_PREFIX}compact-"
RENAME_EXCHANGE = 2  # linux/fs.h
SORT_COLUMN = {
    "media": "timestamp",
    "observations": "timestamp",
    "events": "start",
    "failures": "failed_at",
}


@dataclass
class CompactReport:
    folders: int = 0  # partition folders rewritten
    files_before: int = 0
    files_after: int = 0
    rows: int = 0
    retried: int = 0  # folders whose swap was undone because a writer added a file


class UnsafeOnObjectStore(ValueError):
    """In-place compaction on an object store would let plain readers see rows twice."""


def compact(
    root: str,
    tables: list[str] | None = None,
    min_files: int = 2,
    min_age_s: float = 0.0,
    out: str | None = None,
    allow_brief_duplicates: bool = False,
) -> CompactReport:
    """Merge the part files of every partition folder holding at least `min_files` of them.

    In place on local disks (atomic per folder). On object stores, either into a new root
    (`out`: nothing visible changes until readers are pointed there) or, when the caller
    accepts that a plain reader may see a folder's rows twice for a few seconds, in place.
    """
    sink = ParquetSink(root)
    if out is None and not isinstance(sink.fs, LocalFileSystem) and not allow_brief_duplicates:
        raise UnsafeOnObjectStore(
            f"{root}: an object store cannot swap files atomically, so compacting in place lets "
            "plain readers (pandas, DuckDB) see some rows twice for a few seconds. Compact into a "
            "new root with --out and point readers there, or accept it with --allow-brief-duplicates."
        )
    target = ParquetSink(out, sink.compression) if out is not None else None
    report = CompactReport()
    for table in tables or list(TABLES):
        folder = sink.table_dir(table)
        if not sink.fs.exists(folder):
            continue
        visible, replaced = visible_part_files(sink.fs, folder)
        if target is None:
            for path in replaced:  # left by a compaction that stopped before deleting its inputs
                sink.fs.rm(path)
        by_folder: dict[str, list[str]] = defaultdict(list)
        for path in visible:
            by_folder[posixpath.dirname(path)].append(path)
        for folder, files in sorted(by_folder.items()):
            if target is not None:  # a copy: every folder becomes one file in the new root
                merged = _merged(sink, table, files)
                relative = posixpath.relpath(folder, sink.table_dir(table))
                destination = posixpath.join(target.table_dir(table), relative)
                _write_atomically(target, destination, _name(files), merged)
                rows = merged.num_rows
            elif len(files) < min_files or not _quiet(sink, files, min_age_s):
                continue
            else:
                rows = _compact_folder(sink, table, folder, files, report)
            report.folders += 1
            report.files_before += len(files)
            report.files_after += 1
            report.rows += rows
    return report


def _write_atomically(sink: ParquetSink, directory: str, name: str, data: pa.Table) -> None:
    sink.fs.makedirs(directory, exist_ok=True)
    temporary = posixpath.join(directory, f".tmp-{uuid.uuid4().hex}.parquet")
    with sink.fs.open(temporary, "wb") as handle:
        pq.write_table(data, handle, compression=sink.compression)
    sink.fs.mv(temporary, posixpath.join(directory, name))


def _quiet(sink: ParquetSink, files: list[str], min_age_s: float) -> bool:
    if min_age_s <= 0:
        return True
    newest = max(sink.fs.modified(path).timestamp() for path in files)
    return time.time() - newest >= min_age_s


def _merged(sink: ParquetSink, table: str, files: list[str]) -> pa.Table:
    parts = []
    for path in files:
        with sink.fs.open(path, "rb") as handle:
            parts.append(pq.read_table(handle, schema=TABLES[table]))
    merged = pa.concat_tables(parts).sort_by([(SORT_COLUMN[table], "ascending")])
    names = [posixpath.basename(p) for p in files]
    metadata = {
        b"trapline.table": table.encode(),
        b"trapline.replaces": "\n".join(names).encode(),
    }
    return merged.replace_schema_metadata({**(parts[0].schema.metadata or {}), **metadata})


def _name(files: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()[:16]
    return f"{COMPACTED_PREFIX}{digest}.parquet"


def _compact_folder(
    sink: ParquetSink, table: str, folder: str, files: list[str], report: CompactReport
) -> int:
    if isinstance(sink.fs, LocalFileSystem):
        return _swap_local(sink, table, folder, files, report)
    merged = _merged(sink, table, files)
    target = posixpath.join(folder, _name(files))
    with sink.fs.open(target, "wb") as handle:
        pq.write_table(merged, handle, compression=sink.compression)
    for path in files:  # the window in which a plain reader sees these rows twice (see above)
        sink.fs.rm(path)
    return merged.num_rows


def _swap_local(
    sink: ParquetSink, table: str, folder: str, files: list[str], report: CompactReport
) -> int:
    for _attempt in range(5):
        merged = _merged(sink, table, files)
        staging = posixpath.join(posixpath.dirname(folder), f".compacting-{uuid.uuid4().hex}")
        os.makedirs(staging)
        pq.write_table(merged, posixpath.join(staging, _name(files)), compression=sink.compression)
        _exchange(staging, folder)  # `folder` now holds the merged file, `staging` the old files
        added = sorted(set(os.listdir(staging)) - {posixpath.basename(p) for p in files})
        if not added:
            _remove_tree(staging)
            return merged.num_rows
        _exchange(staging, folder)  # a writer added a file meanwhile: undo, and try again
        _remove_tree(staging)
        report.retried += 1
        files = sorted(
            posixpath.join(folder, name)
            for name in os.listdir(folder)
            if name.startswith(PART_PREFIX)
        )
    raise RuntimeError(
        f"{folder}: writers kept adding files; compact it when the stream is quieter"
    )


def _exchange(a: str, b: str) -> None:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), RENAME_EXCHANGE) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot swap {a} and {b} atomically: {os.strerror(error)}")


def _remove_tree(path: str) -> None:
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)
