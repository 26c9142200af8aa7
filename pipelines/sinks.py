"""Parquet sink: each table is a Hive-partitioned folder that pandas, Polars, DuckDB, Spark and R read.

Layout: `TABLE/deployment=<id>/date=<YYYY-MM-DD>/part-<name>.parquet`, so a reader that wants one
camera or one season opens only those folders (`failures` has no date level: a failure has no
capture time). The date is the capture date in UTC; rows without a capture time go to
`date=unknown` (failures without a deployment to `deployment=unknown`). The partition folders repeat columns
that are also in the files (`deployment_id`, `timestamp`), under other names, so readers that
merge the two never meet a clash.

A file appears under its final name only when complete, so a reader never sees half a file:
- `write` (folder runs) writes to a hidden temporary name, then renames; `replace` then removes
  the run's previous files, so re-running the same photos leaves one copy of each row;
- `create` (service mode) writes a file only if none of that name exists, in one atomic step
  (a hard link on local disks; S3's conditional `If-None-Match: *` put, through fsspec's
  exclusive `xb` mode, elsewhere). Which files make a segment, and when it is complete, is
  the segment log's business (`pipelines/segment_log.py`).
Names that start with `_` or `.` are bookkeeping; every Parquet reader skips them.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import time
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import quote

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from trapline.pipelines.tables import SCHEMA_VERSION


def _storage_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or failing store raises: OSError from local disks and most of s3fs,
    but botocore's own errors (EndpointConnectionError, ...) and aiohttp's when s3fs cannot even
    reach the endpoint, which are not OSErrors."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # no S3 support installed: local disks only
        pass
    try:
        from aiohttp import ClientError as HttpClientError

        errors.append(HttpClientError)
    except ImportError:
        pass
    return tuple(errors)


STORAGE_ERRORS = _storage_errors()  # catch these to retry a write later, not to skip it

PART_PREFIX = "part-"
# Not Hive's `__HIVE_DEFAULT_PARTITION__`: pyarrow reads that as null, and pandas then fails
# ("Cannot yet unify dictionaries with nulls") on a table that mixes it with dated folders.
NULL_PARTITION = "unknown"
# Partition folders per table: (folder key, column). The date comes from a timestamp column.
PARTITIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "media": (("deployment", "deployment_id"), ("date", "timestamp")),
    "observations": (("deployment", "deployment_id"), ("date", "timestamp")),
    "events": (("deployment", "deployment_id"), ("date", "start")),
    "failures": (("deployment", "deployment_id"),),
}


def partition_value(value: Any) -> str:
    """A folder-safe partition value: dates as YYYY-MM-DD, odd characters %-encoded (as Hive)."""
    if value is None or value == "":
        return NULL_PARTITION
    if hasattr(value, "date"):
        return value.date().isoformat()
    return quote(str(value), safe="-_.~")


def split_partitions(table: str, data: pa.Table) -> list[tuple[str, pa.Table]]:
    """The rows of `data` grouped by partition folder (relative, e.g. `deployment=a/date=...`)."""
    keys = PARTITIONS[table]
    columns = [data.column(column).to_pylist() for _, column in keys]
    rows_of: dict[str, list[int]] = defaultdict(list)
    for index, values in enumerate(zip(*columns)):
        folder = "/".join(f"{key}={partition_value(v)}" for (key, _), v in zip(keys, values))
        rows_of[folder].append(index)
    return [(folder, data.take(rows)) for folder, rows in sorted(rows_of.items())]


class ParquetSink:
    def __init__(self, out_url: str, compression: str = "zstd"):
        self.fs, root = fsspec.core.url_to_fs(out_url)
        self.root = root.rstrip("/")
        self.compression = compression
        self._bytes_written = 0  # Parquet bytes handed to storage, for the metrics

    def table_dir(self, table: str) -> str:
        return posixpath.join(self.root, table)

    def write(self, table: str, data: pa.Table, part: str) -> list[str]:
        """Write `data` as one file per partition, each atomically; returns their paths.

        An empty table still gets one (empty) file, so every table's folder exists and readers
        that need a file to learn the schema find one.
        """
        groups = split_partitions(table, data) or [(self._null_folder(table), data)]
        paths = []
        for folder, rows in groups:
            directory = posixpath.join(self.table_dir(table), folder)
            self.fs.makedirs(directory, exist_ok=True)
            final = posixpath.join(directory, f"{PART_PREFIX}{part}.parquet")
            temporary = posixpath.join(directory, f".tmp-{uuid.uuid4().hex}.parquet")
            with self.fs.open(temporary, "wb") as handle:
                pq.write_table(self._tagged(table, rows, {}), handle, compression=self.compression)
            self.fs.mv(temporary, final)
            paths.append(final)
        return paths

    def replace(self, table: str, data: pa.Table, part: str) -> list[str]:
        """Write `data`, then remove every other part file of `table`: a folder run's re-run."""
        written = self.write(table, data, part)
        self.remove_parts_except(table, set(written))
        return written

    def create(self, table: str, data: pa.Table, part: str, metadata: dict[str, str]) -> list[str]:
        """Create one file per partition only where absent; returns the files' relative paths.

        A file that already exists is left as it is (the segment log guarantees that a name
        always holds the same offsets, so it holds the same rows).
        """
        names = []
        for folder, rows in split_partitions(table, data):
            directory = posixpath.join(self.table_dir(table), folder)
            self.fs.makedirs(directory, exist_ok=True)
            name = posixpath.join(table, folder, f"{PART_PREFIX}{part}.parquet")
            buffer = io.BytesIO()
            tagged = self._tagged(table, rows, metadata)
            pq.write_table(tagged, buffer, compression=self.compression)
            if create_if_absent(self.fs, posixpath.join(self.root, name), buffer.getvalue()):
                self._bytes_written += buffer.tell()
            names.append(name)
        return names

    def take_bytes_written(self) -> int:
        """Bytes `create` wrote since the last call (a counter's increment)."""
        written, self._bytes_written = self._bytes_written, 0
        return written

    def file_metadata(self, path: str) -> dict[str, str] | None:
        """The `trapline.*` metadata of a part file (path relative to the root), None if absent."""
        try:
            with self.fs.open(posixpath.join(self.root, path), "rb") as handle:
                raw = pq.read_schema(handle).metadata or {}
        except FileNotFoundError:
            return None
        return {
            k.decode()[len("trapline.") :]: v.decode()
            for k, v in raw.items()
            if k.startswith(b"trapline.")
        }

    def part_files(self, table: str) -> list[str]:
        """Every visible part file of `table` (absolute paths), in every partition folder."""
        folder = self.table_dir(table)
        if not self.fs.exists(folder):
            return []
        return sorted(
            path
            for path in self.fs.find(folder)
            if posixpath.basename(path).startswith(PART_PREFIX)
            and not any(p.startswith(("_", ".")) for p in path[len(folder) :].split("/"))
        )

    def remove_parts_except(self, table: str, keep: set[str]) -> int:
        """Delete part files of `table` whose path is not in `keep`; returns how many."""
        stale = [path for path in self.part_files(table) if path not in keep]
        for path in stale:
            self.fs.rm(path)
        return len(stale)

    def _null_folder(self, table: str) -> str:
        return "/".join(f"{key}={NULL_PARTITION}" for key, _ in PARTITIONS[table])

    @staticmethod
    def _tagged(table: str, data: pa.Table, metadata: dict[str, str]) -> pa.Table:
        merged = dict(data.schema.metadata or {})
        merged.update(
            {b"trapline.table": table.encode(), b"trapline.schema_version": SCHEMA_VERSION.encode()}
        )
        merged.update({f"trapline.{k}".encode(): v.encode() for k, v in metadata.items()})
        return data.replace_schema_metadata(merged)


def create_if_absent(fs: Any, path: str, data: bytes) -> bool:
    """Write `path` only if nothing of that name exists, atomically; False if something did."""
    if isinstance(fs, LocalFileSystem):
        directory = posixpath.dirname(path)
        temporary = posixpath.join(directory, f".tmp-{uuid.uuid4().hex}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # durable before it becomes visible
            os.link(temporary, path)  # fails if `path` exists: create-if-absent, atomic
        except FileExistsError:
            return False
        finally:  # also after a failed write (disk full): a leftover would eat the retry's space
            if os.path.exists(temporary):
                os.unlink(temporary)
        return True
    return put_if_absent(fs, path, data)


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
