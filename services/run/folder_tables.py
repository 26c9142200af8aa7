"""How a folder run writes its tables: appends, skips what is committed, resumes after a crash.

A folder run commits one deployment at a time (and a long deployment every `folder_commit_every`
photos, at an event boundary), so a run killed with kill -9 keeps what it committed and a new
run of the same folder does only the rest: inputs already in `media` or `failures` are skipped
before they are read (`pending_refs`). Nothing else in `--out` is touched: another folder, or
the stream's output, stays.

Exactly once per table, also when two runs write one deployment at once (the same folder twice,
`photos` and `./photos`, two card dumps of one camera) or a crash fell between two tables'
commits: each commit first drops the rows whose key the table already holds (media_id,
observation_id, event_id, failed uri), and carries one application transaction per deployment
it writes (the id names the deployment, not the input folder), so any two runs committing the
same deployment at once conflict (delta-rs refuses the second) and the loser filters again on
the new snapshot. A folder run into tables a stream writes is refused (`refuse_stream_tables`):
the stream's commits carry its partitions' ids, not the deployments', so nothing would order a
folder run's commit against a worker's.
"""

from __future__ import annotations

import hashlib
import logging

import pyarrow as pa
import pyarrow.compute as pc

from trapline.pipelines import delta, delta_txn
from trapline.pipelines.flow import Tables
from trapline.pipelines.readers import CommittedInputs, read_table
from trapline.pipelines.types import Failure, MediaRef

log = logging.getLogger(__name__)

KEY = {
    "media": "media_id",
    "observations": "observation_id",
    "events": "event_id",
    "failures": "uri",
}
MAX_COMMIT_ATTEMPTS = 20


def run_app_id(deployment_id: str | None) -> str:
    """The Delta application id under which folder runs commit one deployment's rows."""
    digest = hashlib.sha256(f"{deployment_id or ''}".encode()).hexdigest()[:24]
    return f"trapline-run:{digest}"


class StreamTables(ValueError):
    """A folder run was pointed at tables a stream writes."""


def refuse_stream_tables(out: str) -> None:
    """Raise `StreamTables` if a stream worker has committed to the tables under `out`."""
    # None: no table yet (or a log shape this reader leaves to delta-rs, which lists no app ids)
    versions = delta_txn.read_app_versions(delta.table_uri(out, "media")) or {}
    streams = sorted({app.split(":")[1] for app in versions if app.startswith("trapline:")})
    if streams:
        raise StreamTables(
            f"{out} holds the tables of a stream (consumer group {', '.join(streams)}): a folder "
            "run beside its workers could write a photo twice. Write the folder to another "
            "--out, or send it through the stream: trapline submit FOLDER --bootstrap ..."
        )


def pending_refs(
    committed: CommittedInputs, refs: list[MediaRef], unsupported: list[Failure]
) -> tuple[list[MediaRef], list[Failure], int]:
    """The inputs not yet accounted for in the output, and how many were skipped as done.
    `committed` is the output as the run found it when it started: what this run commits itself
    is in deployments it has already listed, and a concurrent run's commit of the same photo is
    dropped at commit time (`_without_known_keys`)."""
    done = committed.of(
        {r.deployment_id for r in refs} | {f.deployment_id or "" for f in unsupported}
    )
    todo = [r for r in refs if r.uri not in done]
    todo_unsupported = [f for f in unsupported if f.uri not in done]
    skipped = len(refs) - len(todo) + len(unsupported) - len(todo_unsupported)
    return todo, todo_unsupported, skipped


def commit_tables(out: str, deployment_id: str, tables: Tables, compression: str) -> Tables:
    """Append `tables` (one deployment's rows; "*": whichever they hold) to the tables under
    `out`; returns what was actually added (rows whose key a table already held are left out)."""
    deployments = {deployment_id} if deployment_id != "*" else set()
    for data in tables.as_dict().values():
        deployments.update(data.column("deployment_id").to_pylist())
    apps = sorted(run_app_id(deployment) for deployment in deployments)
    added = {}
    for name in delta.WRITE_ORDER:
        added[name] = _commit_one(out, name, apps, tables.as_dict()[name], compression)
    failed_uris = set(added["failures"].column("uri").to_pylist())
    return Tables(
        media=added["media"],
        observations=added["observations"],
        events=added["events"],
        failures=added["failures"],
        failed=[f for f in tables.failed if f.uri in failed_uris],
    )


def _commit_one(out: str, name: str, apps: list[str], data: pa.Table, compression: str) -> pa.Table:
    for _attempt in range(MAX_COMMIT_ATTEMPTS):
        table = delta.create_table(out, name)
        table.update_incremental()
        fresh = _without_known_keys(out, name, data)
        transactions = [
            delta.AppVersion(app, (delta.app_version(table, app) or 0) + 1) for app in apps
        ]
        try:
            delta.append(table, name, fresh, transactions, compression)
        except delta.ConcurrentCommit as refused:
            log.info(
                "%s: another run committed this deployment meanwhile (%s); filtering again",
                name,
                refused,
            )
            continue
        return fresh
    raise RuntimeError(f"{out}/{name}: {MAX_COMMIT_ATTEMPTS} commits refused in a row")


def _without_known_keys(out: str, name: str, data: pa.Table) -> pa.Table:
    if data.num_rows == 0:
        return data
    key = KEY[name]
    deployments = sorted({d for d in data.column("deployment_id").to_pylist() if d is not None})
    where = pc.field("deployment_id").isin(deployments)
    if len(deployments) < len(set(data.column("deployment_id").to_pylist())):
        where = where | pc.field("deployment_id").is_null()
    # Only the keys being written come back: the deployment's other keys (25,000 by the end of
    # a long one) would be built into a table at every commit for nothing.
    where = where & pc.field(key).isin(data.column(key).drop_null().unique())
    known = read_table(out, name, columns=[key], filter=where).column(key)
    if len(known) == 0:
        return data
    return data.filter(pc.invert(pc.is_in(data.column(key), value_set=known)))
