"""What a folder run knows of its output before it writes: what is done, and whether it may write.

A folder run commits one deployment at a time (and a long deployment every `folder_commit_every`
photos, at an event boundary) through the tables' one sink (services/run/delta_sink.py: keyed
batches, one application transaction per deployment), so a run killed with kill -9 keeps what
it committed and a new run of the same folder does only the rest: inputs already in `media` or
`failures` are skipped before they are read (`pending_refs`). Nothing else in `--out` is
touched: another folder stays. A folder run into tables a stream writes is refused
(`refuse_stream_tables`): the stream's commits carry its partitions' ids, not the deployments',
so nothing would order a folder run's commit against a worker's.
"""

from __future__ import annotations

from trapline.pipelines import delta, delta_txn
from trapline.pipelines.readers import CommittedInputs
from trapline.pipelines.types import Failure, MediaRef


def pending_refs(
    committed: CommittedInputs, refs: list[MediaRef], unsupported: list[Failure]
) -> tuple[list[MediaRef], list[Failure], int]:
    """The inputs not yet accounted for in the output, and how many were skipped as done.
    `committed` is the output as the run found it when it started: what this run commits itself
    is in deployments it has already listed, and a concurrent run's commit of the same photo is
    dropped at commit time (the sink leaves out keys a table holds)."""
    done = committed.of(
        {r.deployment_id for r in refs} | {f.deployment_id or "" for f in unsupported}
    )
    todo = [r for r in refs if r.uri not in done]
    todo_unsupported = [f for f in unsupported if f.uri not in done]
    skipped = len(refs) - len(todo) + len(unsupported) - len(todo_unsupported)
    return todo, todo_unsupported, skipped


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
