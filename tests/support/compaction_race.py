"""Processes that take the compaction lease at the same moment (tests/unit/test_compaction.py,
tests/integration/test_compaction_lease_s3.py): each reads the lease, waits at a barrier until
every other has read it too, then commits, so all of them decide on the same epoch."""

from __future__ import annotations

import multiprocessing
from typing import Any

from trapline.pipelines import compaction_lease
from trapline.pipelines.compaction_lease import CompactionLease, LeaseHeld


def take_after_barrier(
    root: str, holder: str, barrier: Any, results: Any, s3: dict | None = None
) -> None:
    """One taker: puts (holder, "took" | "held by <holder>") into `results`."""
    if s3 is not None:  # a spawned process configures its own S3 clients
        from types import SimpleNamespace

        from trapline.services.adapters.object_store import configure_fsspec

        configure_fsspec(SimpleNamespace(**s3))
    original = CompactionLease._snapshot
    waited = []

    def snapshot_then_wait(self: CompactionLease) -> Any:
        found = original(self)
        if not waited:  # the take's read, not the re-read that names the winner
            waited.append(True)
            barrier.wait(timeout=120)
        return found

    compaction_lease.CompactionLease._snapshot = snapshot_then_wait  # type: ignore[method-assign]
    lease = CompactionLease(root, holder)
    try:
        lease.take()
        results.put((holder, "took"))
    except LeaseHeld as held:
        results.put((holder, f"held by {held.holder}"))
    except BaseException as error:  # reported to the test, not lost in a child's stderr
        results.put((holder, f"error {error!r}"))


def race(root: str, takers: int, s3: dict | None = None) -> dict[str, str]:
    """`takers` processes take the lease on `root` at once; {holder: outcome}."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(takers), context.Queue()
    processes = [
        context.Process(target=take_after_barrier, args=(root, f"taker-{i}", barrier, results, s3))
        for i in range(takers)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    return outcomes
