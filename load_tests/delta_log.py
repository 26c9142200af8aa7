"""The Delta log's costs: commits per second, and resuming a partition after a long history.

    .venv/bin/python -m load_tests --mode delta                  # 10 and 10,000 prior commits
    .venv/bin/python -m load_tests --mode delta --history 10,1000 --storage s3://bucket/bench

A stream worker commits each table every few seconds, so a table gathers ~17,000 commits a day.
Resuming a partition (on assignment, after a crash) reads the tables' application transaction
versions; this must not grow with that history. Delta checkpoints (every 10 commits here)
make opening a table read one Parquet checkpoint plus fewer than 10 JSON commits. The
benchmark builds one table per history length with commits shaped like a worker's (20 media
rows, one app transaction per partition of four), then times, each on a fresh process state:
opening the table and reading the four partitions' versions, as `DeltaSink.resume_points`
does. The ratio resume(longest) / resume(shortest) is the figure: ~1 means flat.

    .venv/bin/python -m load_tests --mode delta --history 10,900 --rows-in-every-commit

puts rows in every commit, as a busy stream does, so the writers' OPTIMIZE (every 50 versions)
replaces files all along: each replaced file stays in every checkpoint as a removal until
`delta.deletedFileRetentionDuration` (7 days) has passed, and opening the table reads them all
(`checkpoint_removals`). That open grows with the files written within the retention, not with
the commits alone.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines import delta
from trapline.pipelines.delta_txn import read_app_versions
from trapline.pipelines.flow import assemble
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import MediaRef, MediaResult
from trapline.services.settings import Settings

PARTITIONS = 4
ROWS_PER_COMMIT = 20
MODELS = ModelNames("det", "1", "cls", "1")


def _rows(first: int):
    results = [
        MediaResult(MediaRef(uri=f"/cards/cam-{i % 8}/{i}.jpg", deployment_id=f"cam-{i % 8}"),
                    f"m{i:09d}", f"{i:064d}", 4000, 3000, None, None, None, 1, [])
        for i in range(first, first + ROWS_PER_COMMIT)
    ]  # fmt: skip
    return assemble(results, [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS).media


def build_history(root: str, commits: int, rows_in_every_commit: bool = False) -> float:
    """`commits` worker-shaped commits into `root`/media; returns commits per second."""
    table = delta.create_table(root, "media")
    rows = _rows(0)
    started = time.perf_counter()
    for index in range(commits):
        partition = index % PARTITIONS
        # The first commits carry rows (files to list); the rest only move the versions on, as
        # a quiet partition's commits do: the log, not the data, is what resuming reads.
        data = rows if rows_in_every_commit or index < 50 else rows.slice(0, 0)
        delta.append(table, "media", data, [delta.AppVersion(f"g:t:{partition}", index)])
    return commits / (time.perf_counter() - started)


def checkpoint_removals(root: str) -> int | None:
    """Removals (replaced files within the retention) in the media table's last checkpoint;
    None when it has none or lies on an object store."""
    log = Path(delta.table_uri(root, "media")) / "_delta_log"
    if not (log / "_last_checkpoint").exists():
        return None
    version = json.loads((log / "_last_checkpoint").read_text())["version"]
    checkpoint = pq.read_table(log / f"{version:020d}.checkpoint.parquet", columns=["remove"])
    return len(checkpoint) - checkpoint.column("remove").null_count


def time_resume(root: str, repeats: int = 5) -> float:
    """Median seconds to read every partition's version from the log, as a restart does."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        versions = read_app_versions(delta.table_uri(root, "media"))
        timings.append(time.perf_counter() - started)
        assert versions is not None and len(versions) == PARTITIONS
    return statistics.median(timings)


def time_open(root: str, repeats: int = 5) -> float:
    """Median seconds to open the table with delta-rs and read the versions from its snapshot."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        table = delta.open_table(root, "media")
        versions = [delta.app_version(table, f"g:t:{p}") for p in range(PARTITIONS)]
        timings.append(time.perf_counter() - started)
        assert all(v is not None for v in versions)
    return statistics.median(timings)


def run_delta_bench(
    histories: list[int], storage: str | None = None, rows_in_every_commit: bool = False
) -> dict:
    """Commits/s while building each history, then resume time after each, timed back to
    back (interleaved, several rounds) so that the machine's drift hits all alike; flat ~1."""
    scratch = Path(tempfile.mkdtemp(prefix="trapline-delta-bench-"))
    try:
        roots, rates = {}, {}
        for commits in histories:
            roots[commits] = (
                f"{storage.rstrip('/')}/history-{commits}-{time.time_ns()}"
                if storage
                else str(scratch / f"history-{commits}")
            )
            rates[commits] = build_history(roots[commits], commits, rows_in_every_commit)
            print(f"  {commits:>6} commits built: {rates[commits]:.0f} commits/s", flush=True)
        resume: dict[int, list[float]] = {c: [] for c in histories}
        opened: dict[int, list[float]] = {c: [] for c in histories}
        for _round in range(3):
            for commits in histories:
                resume[commits].append(time_resume(roots[commits]))
                opened[commits].append(time_open(roots[commits]))
        results = []
        for commits in histories:
            r, o = statistics.median(resume[commits]), statistics.median(opened[commits])
            removals = None if storage else checkpoint_removals(roots[commits])
            results.append({
                "prior_commits": commits, "commits_per_second": round(rates[commits], 1),
                "resume_seconds": round(r, 4), "delta_rs_open_seconds": round(o, 4),
                "checkpoint_removals": removals,
            })  # fmt: skip
            print(f"  {commits:>6} prior commits: resume {r * 1000:.1f} ms,"
                  f" delta-rs open {o * 1000:.1f} ms, {removals} removals in the checkpoint",
                  flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shortest, longest = results[0], results[-1]
    return {
        "storage": storage or "local disk",
        "rows_in_every_commit": rows_in_every_commit,
        "histories": results,
        "resume_ratio_longest_to_shortest": round(
            longest["resume_seconds"] / shortest["resume_seconds"], 2
        ),
        "delta_rs_open_ratio_longest_to_shortest": round(
            longest["delta_rs_open_seconds"] / shortest["delta_rs_open_seconds"], 2
        ),
    }
