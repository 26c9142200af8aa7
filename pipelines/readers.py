"""Read a result table back, whatever its layout: the one way our own tools read tables.

Exports, the report, `sort`, the upload API's status and the tests read through `read_table`, so
they do not depend on how the sink lays files out (Hive folders, part names, compaction).
Bookkeeping files and folders start with `_` or `.` and are skipped, as every Parquet reader
(pyarrow, Spark, DuckDB, Polars) skips them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
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
    if not fs.exists(folder):
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    dataset = ds.dataset(
        folder,
        schema=schema,  # partition folders (deployment=, date=) are for pruning, not columns
        format="parquet",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        ignore_prefixes=[".", "_"],
    )
    return dataset.to_table(columns=list(columns) if columns else None, filter=filter)
