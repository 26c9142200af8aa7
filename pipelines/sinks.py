"""Parquet sink: each table is a folder of part files that pandas, Polars and DuckDB read as one.

A part appears under its final name only when complete (written to a hidden temporary name,
then renamed), so a reader never sees half a file. Folder runs replace their own previous
parts after the new ones are in place: a re-run of the same photos leaves one copy of each row.
"""

from __future__ import annotations

import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from trapline.pipelines.tables import SCHEMA_VERSION

PART_PREFIX = "part-"


class ParquetSink:
    def __init__(self, out_url: str, compression: str = "zstd"):
        self.fs, root = fsspec.core.url_to_fs(out_url)
        self.root = root.rstrip("/")
        self.compression = compression

    def table_dir(self, table: str) -> str:
        return posixpath.join(self.root, table)

    def write(self, table: str, data: pa.Table, part: str) -> str:
        """Write one part atomically; returns its path."""
        folder = self.table_dir(table)
        self.fs.makedirs(folder, exist_ok=True)
        final = posixpath.join(folder, f"{PART_PREFIX}{part}.parquet")
        temporary = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}.parquet")
        metadata = dict(data.schema.metadata or {})
        metadata.update({b"trapline.table": table.encode(), b"trapline.schema_version": SCHEMA_VERSION.encode()})
        data = data.replace_schema_metadata(metadata)
        with self.fs.open(temporary, "wb") as handle:
            pq.write_table(data, handle, compression=self.compression)
        self.fs.mv(temporary, final)
        return final

    def remove_parts_except(self, table: str, keep: set[str]) -> int:
        """Delete part files of `table` whose path is not in `keep`; returns how many."""
        folder = self.table_dir(table)
        if not self.fs.exists(folder):
            return 0
        stale = [
            path
            for path in self.fs.ls(folder, detail=False)
            if posixpath.basename(path).startswith(PART_PREFIX) and path not in keep
        ]
        for path in stale:
            self.fs.rm(path)
        return len(stale)
