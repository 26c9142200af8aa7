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


def build(root: str, commits: int, rows_until: int = 3) -> str:
    """`commits` worker-shaped commits (one app per partition, round robin) into root/media."""
    table = delta.create_table(root, "media")
    rows = media_rows("r", 2)
    for index in range(commits):
        data = rows if index < rows_until else rows.slice(0, 0)
        delta.append(table, "media", data, [delta.AppVersion(APPS[index % 4], 1000 + index)])
    return delta.table_uri(root, "media")


def delta_rs_versions(uri: str) -> dict[str, int]:
    table = delta.open_table(uri.rsplit("/", 1)[0], "media")
    return {app: v for app in APPS if (v := table.transaction_version(app)) is not None}


def test_across_checkpoints_it_reads_what_delta_rs_reads(tmp_path):
    uri = build(str(tmp_path), 230)  # checkpoints at versions 99 and 199, then 31 commits
    log_dir = os.path.join(uri, "_delta_log")
    assert json.loads(open(os.path.join(log_dir, "_last_checkpoint")).read())["version"] == 199
    assert read_app_versions(uri) == delta_rs_versions(uri) == {
        "g:t:0": 1228, "g:t:1": 1229, "g:t:2": 1226, "g:t:3": 1227,
    }  # fmt: skip


def test_before_the_first_checkpoint_it_replays_from_version_zero(tmp_path):
    uri = build(str(tmp_path), 6)
    assert not os.path.exists(os.path.join(uri, "_delta_log", "_last_checkpoint"))
    assert read_app_versions(uri) == delta_rs_versions(uri) == {
        "g:t:0": 1004, "g:t:1": 1005, "g:t:2": 1002, "g:t:3": 1003,
    }  # fmt: skip


def test_a_lagging_checkpoint_pointer_costs_more_reads_not_a_wrong_answer(tmp_path):
    uri = build(str(tmp_path), 230)
    pointer = os.path.join(uri, "_delta_log", "_last_checkpoint")
    with open(pointer, "w") as handle:  # as if the writer died before moving it past 99
        json.dump({"version": 99, "size": 1}, handle)
    assert read_app_versions(uri) == delta_rs_versions(uri)


@pytest.mark.parametrize(
    "damage",
    ["no table", "v2 checkpoint", "pointer to a missing checkpoint", "log start cleaned"],
)
def test_a_log_it_does_not_know_is_left_to_delta_rs(tmp_path, damage):
    uri = build(str(tmp_path), 120) if damage != "no table" else str(tmp_path / "media")
    log_dir = os.path.join(uri, "_delta_log")
    if damage == "v2 checkpoint":
        with open(os.path.join(log_dir, "_last_checkpoint"), "w") as handle:
            json.dump({"version": 99, "size": 1, "v2Checkpoint": {"path": "x"}}, handle)
    elif damage == "pointer to a missing checkpoint":
        os.remove(os.path.join(log_dir, f"{99:020d}.checkpoint.parquet"))
    elif damage == "log start cleaned":  # no pointer, and version 0 gone (cleaned)
        os.remove(os.path.join(log_dir, "_last_checkpoint"))
        os.remove(os.path.join(log_dir, f"{0:020d}.json"))
    assert read_app_versions(uri) is None


def test_on_s3_it_reads_what_delta_rs_reads(s3, s3_bucket):
    root = f"s3://{s3_bucket('results')}/results"
    uri = build(root, 110)  # one checkpoint, then ten commits
    assert read_app_versions(uri) == delta_rs_versions(uri)
    assert len(read_app_versions(uri)) == 4
