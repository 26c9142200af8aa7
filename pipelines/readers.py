"""Read a result table back, whatever its layout: the one way our own tools read tables.

Exports, the report, `sort`, the upload API's status and the tests read through `read_table`, so
they do not depend on how the sink lays files out (Hive folders, part names, compaction).
Bookkeeping files and folders start with `_` or `.` and are skipped, as every Parquet reader
(pyarrow, Spark, DuckDB, Polars) skips them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from trapline.pipelines.tables import TABLES


def read_table(
    root: str,
    table: str,
    columns: Sequence[str] | None = None,
    filter: ds.Expression | None = None,  # noqa: A002 - pyarrow's own name for it
    storage_options: dict[str, Any] | None = None,
) -> pa.Table:
    """All rows of `table` under the results `root` (path or URL), in the documented schema.

    A table with no file yet reads as an empty table, not an error: a run may have had no
    failures, a fresh deployment no media.
    """
    schema = TABLES[table]
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    folder = f"{path.rstrip('/')}/{table}"
    fs.invalidate_cache(folder)  # another process (a worker, compaction) may have changed it
    files = visible_part_files(fs, folder)[0] if fs.exists(folder) else []
    if not files:
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    dataset = ds.dataset(
        files,
        schema=schema,  # partition folders (deployment=, date=) are for pruning, not columns
        format="parquet",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
    )
    return dataset.to_table(columns=list(columns) if columns else None, filter=filter)


def visible_part_files(fs: Any, folder: str) -> tuple[list[str], list[str]]:
    """A table folder's part files, split into (visible, replaced by a compacted file).

    On object stores `trapline compact` deletes a folder's inputs after writing their merged
    file (services/compact.py); until it has, both are listed, and this keeps the merged one.
    """
    files = [
        p
        for p in fs.find(folder)
        if p.endswith(".parquet")
        and not any(c.startswith(("_", ".")) for c in p[len(folder) :].split("/"))
    ]
    replaced: set[str] = set()
    for path in files:
        if posixpath.basename(path).startswith("part-compact-"):
            with fs.open(path, "rb") as handle:
                metadata = pq.read_schema(handle).metadata or {}
            names = metadata.get(b"trapline.replaces", b"").decode().split("\n")
            replaced.update(posixpath.join(posixpath.dirname(path), n) for n in names if n)
    return sorted(p for p in files if p not in replaced), sorted(p for p in files if p in replaced)
