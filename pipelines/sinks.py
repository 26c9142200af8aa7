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

import errno
import io
import os
import posixpath
import time
import uuid
from typing import Any

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
        return put_if_absent(self.fs, final, buffer.getvalue())

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


# One PutObject takes at most 5 GiB (larger writes need a multipart upload, see put_if_absent).
MAX_SINGLE_PUT = 5 * 2**30


def put_if_absent(fs: Any, path: str, data: bytes, *, attempts: int = 5) -> bool:
    """Create `path` with `data` only if no object of that name exists; False if one did.

    One PutObject with `If-None-Match: *` (s3fs's exclusive `xb` mode): atomic on AWS S3 and
    Ceph RGW. The block size is set above the payload on purpose: a larger payload would go
    as a multipart upload, and RGW 16.2 ignores `If-None-Match` on CompleteMultipartUpload,
    silently overwriting. Works for any fsspec filesystem that supports `xb`.
    """
    if len(data) >= MAX_SINGLE_PUT:
        raise ValueError(f"{path}: {len(data):,} bytes is above one PutObject's 5 GiB limit")
    for attempt in range(attempts):
        try:
            # s3fs wants blocks of at least 5 MiB; above the payload, it stays one request.
            with fs.open(path, "xb", block_size=max(len(data) + 1, 5 * 2**20)) as handle:
                handle.write(data)
        except FileExistsError:
            return False
        except OSError as error:
            if is_precondition_failed(error):
                return False
            if _status(error) == 409 and attempt + 1 < attempts:
                # AWS: ConditionalRequestConflict, a concurrent conditional write of the same
                # key is in flight; retrying tells us which one won.
                time.sleep(0.05 * (attempt + 1))
                continue
            raise
        return True
    raise AssertionError("unreachable")


def is_precondition_failed(error: BaseException) -> bool:
    """True if a conditional write failed because the object already exists.

    s3fs turns S3's 412 into FileExistsError only when the error names its condition
    (`<Condition>If-None-Match</Condition>`, as AWS sends); Ceph RGW 16.2 does not, so s3fs
    raises OSError(EINVAL) instead. This recognises both.
    """
    if isinstance(error, FileExistsError):
        return True
    if not isinstance(error, OSError):
        return False
    if _status(error) == 412 or _code(error) == "PreconditionFailed":
        return True
    return error.errno == errno.EEXIST


def _status(error: BaseException) -> int | None:
    response = getattr(error.__cause__, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _code(error: BaseException) -> str | None:
    response = getattr(error.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code")
