"""`trapline compact`: Delta OPTIMIZE and VACUUM, while a writer commits."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import timedelta

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from support.delta_commits import commit_photos
from typer.testing import CliRunner

from trapline.pipelines import delta
from trapline.pipelines.compaction_lease import CompactionLease
from trapline.pipelines.readers import read_table
from trapline.services.cli.main import app
from trapline.services.tools import compact as compact_tool
from trapline.services.tools.compact import RetentionTooShort, compact


def data_files(root: str) -> int:
    return len(DeltaTable(f"{root}/media").file_uris())


def test_optimize_merges_small_files_and_keeps_rows_and_app_versions(tmp_path):
    root = str(tmp_path)
    for batch in range(6):
        commit_photos(root, batch * 5, 5)
    before = read_table(root, "media").column("media_id").to_pylist()
    assert data_files(root) == 6
    report = compact(root, ["media"])
    assert report.files_removed == 6 and report.files_added == 1 and data_files(root) == 1
    assert sorted(read_table(root, "media").column("media_id").to_pylist()) == sorted(before)
    assert delta.app_version(delta.open_table(root, "media"), "writer") == 29  # resume unchanged


def test_compaction_while_a_writer_commits_loses_and_duplicates_nothing(tmp_path):
    root = str(tmp_path)
    commit_photos(root, 0, 5)
    commit_photos(root, 5, 5)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for batch in range(2, 30):
                commit_photos(root, batch * 5, 5)
        except BaseException as error:  # reported below, from the test's thread
            errors.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    rounds = 0
    while not done.is_set() or rounds < 2:
        compact(root, ["media"])
        ids = read_table(root, "media").column("media_id").to_pylist()
        assert len(ids) == len(set(ids))  # a reader between rounds never sees a row twice
        rounds += 1
    thread.join()
    assert errors == []
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert sorted(ids) == [f"m{i:05d}" for i in range(150)]
    assert delta.app_version(delta.open_table(root, "media"), "writer") == 149


def test_vacuum_below_a_week_needs_force_and_then_deletes_replaced_files(tmp_path, monkeypatch):
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    with pytest.raises(RetentionTooShort, match="--force-retention"):
        compact(root, ["media"], vacuum_hours=1)
    report = compact(root, ["media"], vacuum_hours=0, force_retention=True)
    assert report.vacuumed == 0  # replaced a moment ago: the hour's floor keeps them
    monkeypatch.setattr(compact_tool, "VACUUM_FLOOR_HOURS", 0)  # an hour later, as it were
    report = compact(root, ["media"], vacuum_hours=0, force_retention=True)
    assert report.vacuumed == 3  # the three replaced files
    on_disk = list((tmp_path / "media").rglob("*.parquet"))
    assert len([p for p in on_disk if "_delta_log" not in str(p)]) == 1
    assert read_table(root, "media").num_rows == 15


def test_vacuum_hours_are_rounded_up_to_whole_hours_and_never_below_the_floor():
    assert [compact_tool.vacuum_retention_hours(h) for h in (0, 0.5, 1, 1.01, 168, 168.2)] == [
        1, 1, 1, 2, 168, 169
    ]  # fmt: skip


def test_vacuum_reads_the_table_after_optimize_so_a_commit_landing_in_between_keeps_its_rows(
    tmp_path, monkeypatch
):
    """With the snapshot from before OPTIMIZE, VACUUM took the file of a commit that landed after
    it for an orphan and deleted it: the latest version no longer read. (The hour's floor alone
    would keep it too: it is off here to show the fresh snapshot does.)"""
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    merge = compact_tool.optimize

    def optimize_then_a_writer_commits(*args, **kwargs):
        merged = merge(*args, **kwargs)
        commit_photos(root, 15, 5)
        return merged

    monkeypatch.setattr(compact_tool, "optimize", optimize_then_a_writer_commits)
    monkeypatch.setattr(compact_tool, "VACUUM_FLOOR_HOURS", 0)
    report = compact(root, ["media"], vacuum_hours=0, force_retention=True)
    assert report.vacuumed == 3  # the replaced files only
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert sorted(ids) == [f"m{i:05d}" for i in range(20)]


def test_vacuum_zero_with_force_keeps_a_file_committed_after_its_snapshot_and_one_being_written(
    tmp_path, monkeypatch
):
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    in_flight = next((tmp_path / "media").rglob("*.parquet")).with_name(
        "part-being-written.parquet"
    )
    vacuum = DeltaTable.vacuum

    def a_writer_goes_on_while_vacuum_lists(self, *args, **kwargs):
        commit_photos(root, 15, 5)  # committed after the snapshot VACUUM holds
        in_flight.write_bytes(b"PAR1 not yet committed")
        return vacuum(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "vacuum", a_writer_goes_on_while_vacuum_lists)
    done = CliRunner().invoke(app, ["compact", root, "--vacuum", "0", "--force-retention"])
    assert done.exit_code == 0, done.output
    assert in_flight.exists()
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert sorted(ids) == [f"m{i:05d}" for i in range(20)]


def test_vacuum_deletes_replaced_files_a_checkpoint_forgot_and_old_orphans_not_a_writers_new_file(
    tmp_path,
):
    """A week on: the checkpoints no longer name the replaced files (their removals expired),
    so delta-rs's default `lite` VACUUM found none of them and they stayed on storage for good."""
    root = str(tmp_path)
    folder = tmp_path / "media"
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    week_ago = time.time() - 8 * 24 * 3600
    replaced = [p for p in folder.rglob("*.parquet") if "_delta_log" not in p.parts]
    for path in replaced:  # written more than the retention ago
        os.utime(path, (week_ago, week_ago))
    compact(root, ["media"])  # OPTIMIZE: the three are removed from the table, not from storage
    # The removals expire (a second, standing in for the 7 days) and a checkpoint drops them.
    table = delta.open_table(root, "media")
    table.alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 1 seconds"})
    time.sleep(1.5)
    commit_photos(root, 15, 5)
    delta.open_table(root, "media").create_checkpoint()
    crashed = folder / replaced[0].relative_to(folder).with_name("part-crashed-commit.parquet")
    in_flight = crashed.with_name("part-being-written.parquet")
    for orphan in (crashed, in_flight):
        shutil.copy(replaced[0], orphan)
    os.utime(crashed, (week_ago, week_ago))
    assert delta.open_table(root, "media").vacuum(retention_hours=168, dry_run=True) == []

    report = compact(root, ["media"], vacuum_hours=168)
    assert report.vacuumed == 4  # the three replaced files and the crashed commit's
    left = {p for p in folder.rglob("*.parquet") if "_delta_log" not in p.parts}
    assert not left & {*replaced, crashed} and in_flight in left
    assert read_table(root, "media").num_rows == 20


def test_compact_command_refuses_a_short_vacuum_and_reports_what_it_did(tmp_path):
    root = str(tmp_path)
    commit_photos(root, 0, 5)
    commit_photos(root, 5, 5)
    refused = CliRunner().invoke(app, ["compact", root, "--vacuum", "2"])
    assert refused.exit_code == 2 and "--force-retention" in refused.output
    done = CliRunner().invoke(app, ["compact", root])
    assert done.exit_code == 0 and "2 files -> 1" in done.output


def test_compact_command_refuses_while_another_compaction_holds_the_lease_naming_it(tmp_path):
    root = str(tmp_path)
    commit_photos(root, 0, 5)
    commit_photos(root, 5, 5)
    holder = CompactionLease(root, "writer on worker-0 (pid 7, 1a2b3c4d)")
    holder.take()
    refused = CliRunner().invoke(app, ["compact", root])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 3, refused.output
    assert "held by writer on worker-0 (pid 7, 1a2b3c4d) until 20" in said and " UTC (" in said
    assert "--wait" in said
    assert data_files(root) == 2  # nothing merged
    holder.release()
    done = CliRunner().invoke(app, ["compact", root])
    assert done.exit_code == 0 and "2 files -> 1" in done.output
    assert CompactionLease(root).read().held is False  # released at the end


def test_compact_waits_for_a_crashed_holders_lease_to_expire(tmp_path):
    root = str(tmp_path)
    commit_photos(root, 0, 5)
    commit_photos(root, 5, 5)
    CompactionLease(root, "crashed", ttl=timedelta(milliseconds=300)).take()  # never released
    done = CliRunner().invoke(app, ["compact", root, "--wait", "600"])
    assert done.exit_code == 0 and "2 files -> 1" in done.output


def test_writers_merge_small_files_every_few_versions_without_losing_a_row(tmp_path, monkeypatch):
    """The in-writer compaction (pipelines/delta.py): the commit landing on a multiple of
    COMPACT_EVERY_VERSIONS merges the files; rows and app versions are those committed."""
    monkeypatch.setattr(delta, "COMPACT_EVERY_VERSIONS", 4)
    root = str(tmp_path)
    for batch in range(3):  # versions 1-3 (0 is the table's creation): three small files
        commit_photos(root, batch * 5, 5)
    assert data_files(root) == 3
    commit_photos(root, 15, 5)  # version 4: its own file, then all four merged
    assert data_files(root) == 1
    commit_photos(root, 20, 5)
    assert data_files(root) == 2
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert sorted(ids) == [f"m{i:05d}" for i in range(25)]
    assert delta.app_version(delta.open_table(root, "media"), "writer") == 24


def test_statistics_are_kept_only_for_the_columns_readers_filter_on(tmp_path):
    root = str(tmp_path)
    commit_photos(root, 0, 3)
    add = pa.table(DeltaTable(f"{root}/media").get_add_actions(flatten=True)).to_pydict()
    stats = {k.split(".", 1)[1] for k in add if k.startswith("min.")}
    assert stats == set(delta.STATS_COLUMNS["media"])


def test_checkpoint_heads_alone_holds_the_latest_version_rows_and_app_versions(tmp_path):
    root = str(tmp_path)
    for first in (0, 5, 10):
        commit_photos(root, first, 5)
    log_dir = tmp_path / "media" / "_delta_log"
    head = DeltaTable(root + "/media").version()
    assert head % 10 != 0, "delta-rs would have checkpointed this version itself"

    delta.checkpoint_heads(root)

    checkpoint = log_dir / f"{head:020d}.checkpoint.parquet"
    assert json.loads((log_dir / "_last_checkpoint").read_text())["version"] == head
    written = checkpoint.stat().st_mtime_ns
    delta.checkpoint_heads(root)  # already there: not written again
    assert checkpoint.stat().st_mtime_ns == written
    for commit in log_dir.glob("*.json"):  # the checkpoint is all a reader needs now
        commit.unlink()
    alone = DeltaTable(root + "/media")
    assert alone.version() == head
    assert alone.to_pyarrow_table().num_rows == 15
    assert delta.app_version(alone, "writer") == 14


def test_checkpoint_heads_of_tables_nobody_created_does_nothing(tmp_path):
    delta.checkpoint_heads(str(tmp_path))
    assert not (tmp_path / "media").exists()
