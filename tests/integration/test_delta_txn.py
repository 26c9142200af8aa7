"""The resume reader (`pipelines/delta_txn.py`) agrees with delta-rs on every log shape it
accepts, and hands the shapes it does not know back to delta-rs (returns None)."""

from __future__ import annotations

import json
import os

import pytest
from test_s3 import media_rows

from trapline.pipelines import delta
from trapline.pipelines.delta_txn import read_app_versions

pytest_plugins = ["support.s3_fixtures"]
APPS = [f"g:t:{p}" for p in range(4)]
INTERVAL = int(delta.TABLE_CONFIGURATION["delta.checkpointInterval"])


def build(root: str, commits: int, rows_until: int = 3) -> str:
    """`commits` worker-shaped commits (one app per partition, round robin) into root/media."""
    table = delta.create_table(root, "media")
    rows = media_rows("r", 2)
    for index in range(commits):
        data = rows if index < rows_until else rows.slice(0, 0)
        delta.append(table, "media", data, [delta.AppVersion(APPS[index % 4], 1000 + index)])
    return delta.table_uri(root, "media")


def written_versions(commits: int) -> dict[str, int]:
    """What `build` wrote: each app's last version (1000 + the index of its last commit)."""
    return {app: 1000 + max(i for i in range(commits) if i % 4 == n) for n, app in enumerate(APPS)}


def checkpoints(uri: str) -> list[int]:
    """The versions that have a checkpoint file, oldest first."""
    names = os.listdir(os.path.join(uri, "_delta_log"))
    return sorted(int(n.split(".")[0]) for n in names if n.endswith(".checkpoint.parquet"))


def delta_rs_versions(uri: str) -> dict[str, int]:
    table = delta.open_table(uri.rsplit("/", 1)[0], "media")
    return {app: v for app in APPS if (v := table.transaction_version(app)) is not None}


def test_across_checkpoints_it_reads_what_delta_rs_reads(tmp_path):
    commits = 2 * INTERVAL + 31  # two checkpoints or more, then commits after the last
    uri = build(str(tmp_path), commits)
    log_dir = os.path.join(uri, "_delta_log")
    last = json.loads(open(os.path.join(log_dir, "_last_checkpoint")).read())["version"]
    assert len(checkpoints(uri)) >= 2 and last == checkpoints(uri)[-1] < commits
    assert read_app_versions(uri) == delta_rs_versions(uri) == written_versions(commits)


def test_before_the_first_checkpoint_it_replays_from_version_zero(tmp_path):
    commits = INTERVAL // 2
    uri = build(str(tmp_path), commits)
    assert not os.path.exists(os.path.join(uri, "_delta_log", "_last_checkpoint"))
    assert read_app_versions(uri) == delta_rs_versions(uri) == written_versions(commits)


def test_a_lagging_checkpoint_pointer_costs_more_reads_not_a_wrong_answer(tmp_path):
    uri = build(str(tmp_path), 2 * INTERVAL + 31)
    pointer = os.path.join(uri, "_delta_log", "_last_checkpoint")
    with open(pointer, "w") as handle:  # as if the writer died before moving it past the first
        json.dump({"version": checkpoints(uri)[0], "size": 1}, handle)
    assert read_app_versions(uri) == delta_rs_versions(uri)


@pytest.mark.parametrize(
    "damage",
    ["no table", "v2 checkpoint", "pointer to a missing checkpoint", "log start cleaned"],
)
def test_a_log_it_does_not_know_is_left_to_delta_rs(tmp_path, damage):
    uri = build(str(tmp_path), INTERVAL + 20) if damage != "no table" else str(tmp_path / "media")
    log_dir = os.path.join(uri, "_delta_log")
    if damage == "v2 checkpoint":
        with open(os.path.join(log_dir, "_last_checkpoint"), "w") as handle:
            json.dump({"version": checkpoints(uri)[-1], "size": 1, "v2Checkpoint": {"path": "x"}}, handle)
    elif damage == "pointer to a missing checkpoint":
        os.remove(os.path.join(log_dir, f"{checkpoints(uri)[-1]:020d}.checkpoint.parquet"))
    elif damage == "log start cleaned":  # no pointer, and version 0 gone (cleaned)
        os.remove(os.path.join(log_dir, "_last_checkpoint"))
        os.remove(os.path.join(log_dir, f"{0:020d}.json"))
    assert read_app_versions(uri) is None


def test_on_s3_it_reads_what_delta_rs_reads(s3, s3_bucket):
    root = f"s3://{s3_bucket('results')}/results"
    uri = build(root, INTERVAL + 10)  # a checkpoint, then commits after it
    assert read_app_versions(uri) == delta_rs_versions(uri)
    assert len(read_app_versions(uri)) == 4
