"""Read a result table back through its Delta log: the one way our own tools read tables.

Exports, the report, `sort`, the upload API's status and the tests read through `read_table`, so
they see exactly the committed rows (never a file written but not committed, never a file that
compaction replaced) and can pin a version for a reproducible analysis. A plain Parquet reader
pointed at the folder gets this wrong: it reads uncommitted and replaced files too.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from trapline.pipelines.delta import open_table
from trapline.pipelines.tables import TABLES


def read_table(
    root: str,
    table: str,
    columns: Sequence[str] | None = None,
    filter: ds.Expression | None = None,  # noqa: A002 - pyarrow's own name for it
    version: int | datetime | None = None,
) -> pa.Table:
    """The committed rows of `table` under the results `root` (path or URL), in its schema.

    `version`: the table as of that Delta version (an int) or time (a tz-aware datetime), for a
    reproducible analysis; None reads the latest. A table nobody wrote yet reads as an empty
    table, not an error: a run may have had no failures, a fresh deployment no media.
    """
    schema = TABLES[table]
    delta = open_table(root, table, version if isinstance(version, int) else None)
    if delta is None:
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    if isinstance(version, datetime):
        delta.load_as_version(version)
    data = delta.to_pyarrow_dataset().to_table(
        columns=list(columns) if columns else None, filter=filter
    )
    return _in_our_schema(data, schema, columns)


def _in_our_schema(data: pa.Table, schema: pa.Schema, columns: Sequence[str] | None) -> pa.Table:
    wanted = pa.schema([schema.field(name) for name in columns]) if columns else schema
    return data.select(wanted.names).cast(wanted)  # Delta's types back to ours (string, metadata)


class DeploymentRows:
    """One table's committed rows a deployment at a time, from one read of its log.

    For the tools that walk a season deployment by deployment (the report, a folder run that
    checks each deployment against its output): a deployment's rows come from its own partition
    files, so the tool holds one deployment's rows, not the table's, and reads the log once
    (~15 ms a table at 100,000 photos), not once a deployment. The rows are those of the version
    read when this was made; a later commit is not seen.
    """

    def __init__(self, root: str, table: str, columns: Sequence[str] | None = None) -> None:
        self.schema, self.columns = TABLES[table], list(columns) if columns else None
        delta = open_table(root, table)
        self._dataset = None if delta is None else delta.to_pyarrow_dataset()

    def deployments(self) -> list[str]:
        """The deployments with rows, in name order (from the files' partition values)."""
        if self._dataset is None:
            return []
        found = {
            ds.get_partition_keys(fragment.partition_expression).get("deployment_id")
            for fragment in self._dataset.get_fragments()
        }
        return sorted(str(value) for value in found if value is not None)

    def of(self, deployment_ids: str | Iterable[str]) -> pa.Table:
        """The rows of one deployment, or of several."""
        wanted = [deployment_ids] if isinstance(deployment_ids, str) else sorted(deployment_ids)
        if self._dataset is None or not wanted:
            empty = self.schema.empty_table()
            return empty.select(self.columns) if self.columns else empty
        data = self._dataset.to_table(
            columns=self.columns, filter=pc.field("deployment_id").isin(wanted)
        )
        return _in_our_schema(data, self.schema, self.columns)


class CompactIds:
    """A set of ids (strings) kept as 16-byte BLAKE2b digests in one sorted NumPy array.

    A stream worker keeps the ids of its deployments for as long as it runs, and a folder run
    those of the deployment it is writing: as a Python set of 64-character strings that is ~150
    bytes an id (100,000 photos: 18 MB), here 16 (1.6 MB). 128 bits: neither a chance collision
    (1e-26 at a million ids) nor a crafted one (2**64 hashes) makes a new photo look known.
    """

    MERGE_EVERY = 4096  # ids added since the last merge wait in a small set

    def __init__(self, ids: Iterable[str | None] = ()) -> None:
        self._sorted = np.empty(0, dtype="V16")
        self._recent: set[bytes] = set()
        self.update(ids)

    @staticmethod
    def _digest(value: str) -> bytes:
        return hashlib.blake2b(value.encode(), digest_size=16).digest()

    def update(self, ids: Iterable[str | None]) -> None:
        self._recent.update(self._digest(value) for value in ids if value is not None)
        if len(self._recent) >= self.MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        fresh = np.frombuffer(b"".join(self._recent), dtype="V16")
        self._sorted = np.union1d(self._sorted, fresh)  # sorted, each digest once
        self._recent.clear()

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        digest = self._digest(value)
        if digest in self._recent:
            return True
        index = int(np.searchsorted(self._sorted, np.void(digest)))
        return index < len(self._sorted) and self._sorted[index].tobytes() == digest

    def __len__(self) -> int:
        self._merge()  # an id added again may wait in `_recent` while also in `_sorted`
        return len(self._sorted)

    @property
    def held(self) -> int:
        """Digests held, without merging (an id added twice lately may count twice)."""
        return len(self._sorted) + len(self._recent)


class KnownMedia:
    """Which photos the media table already holds, per deployment, loaded on first need.

    Deduplication across runs and partitions: a photo is a duplicate when its media_id or its
    bytes (sha256) are already in the table. The message key is the deployment, so a photo's
    repeats reach the same stream worker, which keeps what it committed here. A worker runs for
    weeks while cameras come and go, so past `max_ids` digests (16 bytes each) the deployments
    used least lately are let go: a quiet camera's ids are read again from the table (which holds
    all it committed) when it next sends, and memory stays bounded, not grown with history.
    """

    def __init__(self, root: str, max_ids: int = 4_000_000) -> None:
        self.root = root
        self.max_ids = max_ids
        self.ids: OrderedDict[str, CompactIds] = OrderedDict()  # least recently used first

    def of(self, deployment_id: str) -> CompactIds:
        known = self.ids.get(deployment_id)
        if known is not None:
            self.ids.move_to_end(deployment_id)
            return known
        rows = read_table(
            self.root,
            "media",
            columns=["media_id", "sha256"],
            filter=pc.field("deployment_id") == deployment_id,
        )
        known = CompactIds(rows.column("media_id").to_pylist())
        known.update(rows.column("sha256").to_pylist())
        self.ids[deployment_id] = known
        self._let_go()
        return known

    def add(self, media: pa.Table) -> None:
        """Remember rows just committed (only for deployments held: the others read the table)."""
        for deployment, media_id, sha256 in zip(
            media.column("deployment_id").to_pylist(),
            media.column("media_id").to_pylist(),
            media.column("sha256").to_pylist(),
        ):
            if deployment in self.ids:
                self.ids[deployment].update((media_id, sha256))
        self._let_go()

    def clear(self) -> None:
        """Forget every deployment: a partition was assigned, and while another worker owned
        it that worker may have written any of them (a re-upload it wrote would otherwise
        be written again here)."""
        self.ids.clear()

    def forget(self, deployments: Iterable[str]) -> None:
        """Someone else wrote these deployments: read them again when next needed."""
        for deployment in deployments:
            self.ids.pop(deployment, None)

    def _let_go(self) -> None:
        """Drop the least recently used deployments while more than `max_ids` are held (the
        one used last stays, whatever its size)."""
        held = sum(known.held for known in self.ids.values())
        while held > self.max_ids and len(self.ids) > 1:
            _, known = self.ids.popitem(last=False)
            held -= known.held


class CommittedInputs:
    """Inputs already accounted for (a media or a failures row) under `root`, asked a deployment
    at a time: a folder run's check of each deployment it lists against its output, with the
    media and failures logs read once a run (`DeploymentRows`), not once a deployment."""

    def __init__(self, root: str) -> None:
        self.tables = [DeploymentRows(root, name, ["uri"]) for name in ("media", "failures")]

    def of(self, deployment_ids: Iterable[str]) -> set[str]:
        wanted = set(deployment_ids)
        uris: set[str] = set()
        for rows in self.tables:
            uris.update(rows.of(wanted).column("uri").to_pylist())
        return uris
