"""Parquet sink: each table is a folder of part files that pandas, Polars and DuckDB read as one.

A part appears under its final name only when complete (written to a hidden temporary name,
then renamed), so a reader never sees half a file. Folder runs replace their own previous
parts after the new ones are in place: a re-run of the same photos leaves one copy of each row.

The service mode needs more: `create` writes a part only if no part of that name exists, in one
atomic step (a hard link on local disks; S3's conditional `If-None-Match: *` put, through
fsspec's exclusive `xb` mode, elsewhere). A part's name says where its batch starts, so of two
workers writing the same batch (a zombie that lost its partition, a replay after a crash) exactly
one wins, and the loser learns what the winner covered from the part's metadata.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

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

    def create(self, table: str, data: pa.Table, part: str, metadata: dict[str, str]) -> bool:
        """Write `part` only if it does not exist yet, atomically; False if it already existed."""
        folder = self.table_dir(table)
        self.fs.makedirs(folder, exist_ok=True)
        final = posixpath.join(folder, f"{PART_PREFIX}{part}.parquet")
        merged = dict(data.schema.metadata or {})
        merged.update({b"trapline.table": table.encode(), b"trapline.schema_version": SCHEMA_VERSION.encode()})
        merged.update({f"trapline.{k}".encode(): v.encode() for k, v in metadata.items()})
        data = data.replace_schema_metadata(merged)
        if isinstance(self.fs, LocalFileSystem):
            temporary = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}.parquet")
            pq.write_table(data, temporary, compression=self.compression)
            try:
                with open(temporary, "rb+") as handle:
                    os.fsync(handle.fileno())  # durable before it becomes visible
                os.link(temporary, final)  # fails if `final` exists: create-if-absent, atomic
            except FileExistsError:
                return False
            finally:
                os.unlink(temporary)
            return True
        buffer = io.BytesIO()
        pq.write_table(data, buffer, compression=self.compression)
        try:
            with self.fs.open(final, "xb") as handle:  # s3fs: PutObject with If-None-Match: *
                handle.write(buffer.getvalue())
        except FileExistsError:
            return False
        return True

    def part_metadata(self, table: str, part: str) -> dict[str, str] | None:
        """The `trapline.*` metadata of a part, or None if it does not exist."""
        path = posixpath.join(self.table_dir(table), f"{PART_PREFIX}{part}.parquet")
        try:
            with self.fs.open(path, "rb") as handle:
                raw = pq.read_schema(handle).metadata or {}
        except FileNotFoundError:
            return None
        return {
            k.decode()[len("trapline.") :]: v.decode()
            for k, v in raw.items()
            if k.startswith(b"trapline.")
        }

    def part_names(self, table: str, prefix: str) -> list[str]:
        """Names (without `part-` and `.parquet`) of the parts of `table` starting with `prefix`."""
        folder = self.table_dir(table)
        if not self.fs.exists(folder):
            return []
        names = []
        for path in self.fs.ls(folder, detail=False):
            base = posixpath.basename(path)
            if base.startswith(PART_PREFIX + prefix) and base.endswith(".parquet"):
                names.append(base[len(PART_PREFIX) : -len(".parquet")])
        return sorted(names)

    def read_column(self, table: str, part: str, column: str) -> list:
        path = posixpath.join(self.table_dir(table), f"{PART_PREFIX}{part}.parquet")
        with self.fs.open(path, "rb") as handle:
            return pq.read_table(handle, columns=[column]).column(column).to_pylist()

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
