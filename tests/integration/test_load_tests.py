"""`python -m load_tests` on a handful of small photos: every stage of the benchmark runs against
the real broker and real workers, and the report has every field (no timing assertions: figures
on shared CI machines are noise; only the benchmark's own in-run ratios mean anything)."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from load_tests.__main__ import main
from load_tests.report import FOLDER_FIELDS, REPORT_FIELDS, STREAM_FIELDS


@pytest.mark.slow
def test_driver_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "report"
    main([
        "--photos", "8", "--size", "640x480", "--workers", "0", "--stage-sample", "4",
        "--naive-sample", "2", "--stream-workers", "1", "--cache", str(tmp_path / "photos"),
        "--out", str(out),
    ])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert list(report) == list(REPORT_FIELDS)
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")
    assert list(report["folder"]) == list(FOLDER_FIELDS)
    assert report["folder"]["processed"] == 8 and report["folder"]["failed"] == 0
    for phase in ("saturated", "paced"):
        stream = report["stream"][phase]
        assert list(stream) == list(STREAM_FIELDS)
        assert stream["media_rows"] == stream["events"]  # every event became a row
        assert stream["lag_final"] == 0
        assert stream["dead_letter_records"] == 0  # every photo is whole: none refused
        assert stream["latency_seconds"]["p50"] > 0
        assert stream["processes"], "worker CPU/RSS were sampled"
    assert set(report["stage_seconds_per_photo"]) == {
        "read",
        "decode",
        "detect",
        "classify",
        "write",
    }
    assert report["pipeline_efficiency"] > 0 and report["speedup_over_naive"] > 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2].startswith("pipeline efficiency (headline):")
    assert printed[-1].startswith("speed-up over the naive")


@pytest.mark.slow
def test_growth_mode_records_each_size_and_its_ratios(tmp_path, capsys):
    out = tmp_path / "growth"
    main([
        "--mode", "growth", "--sizes", "6,12", "--growth-modes", "folder", "--stream-workers", "0",
        "--cache", str(tmp_path / "photos"), "--out", str(out),
    ])  # fmt: skip
    result = json.loads((out / "growth.json").read_text())
    assert (out / "growth.png").read_bytes().startswith(b"\x89PNG")
    runs = result["folder"]["runs"]
    assert [r["photos"] for r in runs] == [6, 12]
    assert len(runs[0]["photos_per_second_repeats"]) == 3  # the short baseline: median of 3
    assert runs[0]["photos_per_second"] == sorted(runs[0]["photos_per_second_repeats"])[1]
    for run in runs:
        assert run["photos_per_second"] > 0 and run["peak_rss_mb"]["driver"] > 0
        assert (
            run["tables"]["media"]["data_files"] >= 1 and run["tables"]["media"]["log_entries"] >= 2
        )
        assert run["open_seconds"] > 0 and run["resume_seconds"] > 0 and run["report_seconds"] > 0
        assert run["report_peak_rss_mb"] > 0  # `trapline report` as a process of its own
        assert run["bad_inputs"] == 1 and run["failures_by_kind"] == {"truncated": 1}  # input 5
        assert {"decode", "detect", "write"} <= set(run["stage_seconds_per_photo"])
        seconds = [t for t, _ in run["rss_timeline_mb"]["driver"]]  # memory over the run
        assert len(seconds) >= 2 and seconds == sorted(seconds)
    ratios = result["folder"]["ratios_to_smallest"]
    assert set(ratios) == {
        "photos_per_second",
        "photos_per_second_before_only",
        "peak_rss",
        "open",
        "resume",
        "open_resume_side_by_side_ms",
        "open_apart",
        "resume_apart",
        "largest_run_late_to_early_rate",
        "report_peak_rss",
        "stage_seconds_per_photo",
    }
    # Against the machine's drift: the smallest size again after the largest, its photos/s in
    # the denominator with the first runs', and the two outputs' opens timed side by side.
    again = result["folder"]["smallest_again"]
    assert again["photos"] == 6 and len(again["photos_per_second_repeats"]) == 3
    baseline = statistics.median(
        runs[0]["photos_per_second_repeats"] + again["photos_per_second_repeats"]
    )
    assert ratios["photos_per_second"] == round(runs[1]["photos_per_second"] / baseline, 3)
    small_ms, large_ms = ratios["open_resume_side_by_side_ms"]["open_ms"]
    assert small_ms > 0 and large_ms > 0 and ratios["open"] > 0
    assert "folder: 12 / 6 photos" in capsys.readouterr().out


def test_late_to_early_rate_compares_a_runs_last_tenth_with_its_first(tmp_path):
    """50 commits of 10 rows: 1 s apart at first, 2 s apart at the end: half the rate."""
    from datetime import datetime, timedelta, timezone

    import pyarrow as pa

    from load_tests.growth import late_to_early_rate
    from trapline.pipelines import delta

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    seconds = [float(i) for i in range(25)] + [24.0 + 2 * i for i in range(1, 26)]
    table = delta.create_table(str(tmp_path), "media")
    schema = delta.TABLES["media"]
    for commit, second in enumerate(seconds):
        rows = {}
        for field in schema:  # required columns: any value of their type
            if field.nullable:
                value = None
            elif pa.types.is_string(field.type):
                value = ""
            else:
                value = pa.scalar(0).cast(field.type).as_py()
            rows[field.name] = [value] * 10
        rows.update(
            media_id=[f"m{commit}-{i}" for i in range(10)],
            deployment_id=["cam"] * 10,
            processed_at=[start + timedelta(seconds=second)] * 10,
        )
        table.update_incremental()
        delta.append(table, "media", pa.Table.from_pydict(rows, schema=schema))
    assert late_to_early_rate(tmp_path) == 0.5
    assert late_to_early_rate(tmp_path / "none") is None  # no rows: too coarse to say


@pytest.mark.slow
def test_cluster_mode_spreads_both_modes_over_two_ray_nodes(tmp_path, capsys):
    """A real two-node Ray cluster (`ray start` twice): the folder run's actors and the stream's
    actors land on both nodes and each node processes photos; the cluster is gone afterwards."""
    out = tmp_path / "cluster"
    result = main([
        "--mode", "cluster", "--photos", "16", "--size", "640x480",
        "--cache", str(tmp_path / "photos"), "--out", str(out),
    ])  # fmt: skip
    assert json.loads((out / "cluster.json").read_text()) == result
    for mode in ("folder", "stream"):
        per_node = result[mode]["per_node"]
        assert set(per_node) == {"head", "second"}, per_node
        assert sum(node["photos"] for node in per_node.values()) == 16
        assert all(node["photos"] > 0 for node in per_node.values()), per_node
        assert 0 < result[mode]["stage_busy_share"] <= 1
    assert result["work_on_every_node"] is True
    assert "work on both nodes in both modes: True" in capsys.readouterr().out
    assert not os.environ.get("RAY_ADDRESS"), "the bench must restore the environment"


def test_the_stream_bench_counts_committed_rows_not_the_files_compaction_replaced(tmp_path):
    """The writers' OPTIMIZE leaves the files it merged on storage: the bench's row counter must
    read the log (it once counted files, saw rows twice and ended a 100k-photo run at 36k)."""
    from load_tests.delta_log import _rows
    from load_tests.stream import _RowCounter
    from trapline.pipelines import delta
    from trapline.pipelines.readers import read_table

    table = delta.create_table(str(tmp_path), "media")
    for commit in range(delta.COMPACT_EVERY_VERSIONS + 5):  # one compaction on the way
        delta.append(table, "media", _rows(commit * 20))
    committed = read_table(str(tmp_path), "media").num_rows
    files = len(list((tmp_path / "media").rglob("*.parquet")))
    assert files > committed // 20 + 1  # the merged files are still there
    assert _RowCounter(tmp_path).count() == committed


def test_the_delta_bench_counts_the_removals_each_checkpoint_keeps(tmp_path):
    """With rows in every commit the writers' OPTIMIZE replaces files, and every later
    checkpoint keeps each replaced file as a removal for the retention: what opening grows with."""
    from load_tests.delta_log import run_delta_bench

    busy = run_delta_bench([10, 60, 110], rows_in_every_commit=True)
    # 50 commits of 8 cameras' files merged at version 50, 50 more at 100: all still kept
    assert [h["checkpoint_removals"] for h in busy["histories"]] == [0, 400, 800]
    quiet = run_delta_bench([110])  # rows in the first 50 commits only
    assert quiet["histories"][0]["checkpoint_removals"] == 400


@pytest.mark.slow
def test_chaos_mode_kills_compacts_and_accounts_for_every_record(tmp_path, capsys):
    """One small trial of the exactly-once check from outside: two real workers killed -9 and
    restarted, `trapline compact` in a loop, a polling reader; every record ends once."""
    out = tmp_path / "chaos"
    result = main([
        "--mode", "chaos", "--trials", "1", "--photos", "40", "--kills", "2", "--trickle-s", "15",
        "--out", str(out),
    ])  # fmt: skip
    assert json.loads((out / "report.json").read_text())["kept"] is True
    trial = result["trials"][0]
    assert trial["kills"] == 2 and trial["compactions_run"] + trial["compactions_skipped"] > 0
    assert trial["submitted"] == 43  # 40 photos (1 corrupt), 1 re-sent, 1 copy, 1 malformed
    assert trial["rows"]["duplicate_rows"] == 2 and trial["rows"]["event_rows"] == 1
    assert trial["reader_polls"] > 5 and trial["reader_most_rows"] == 43  # the last poll: the end
    assert set(trial["lag_at_end"].values()) == {0}
    assert (out / "trial-1" / "worker-0.log").exists()
    assert "exactly once: kept" in capsys.readouterr().out


def _media_with_sources(root: str, offsets: list[int], app: str) -> None:
    """One commit of media rows for records t/0/<offset> (media_id m<offset>)."""
    from support.delta_commits import MODELS

    from trapline.models.labels import DEEPFAUNE_LABELS
    from trapline.pipelines import delta
    from trapline.pipelines.flow import assemble
    from trapline.pipelines.types import MediaRef, MediaResult
    from trapline.services.settings import Settings

    results = [
        MediaResult(MediaRef(f"/cam/{i}.jpg", "cam", source=f"t/0/{i}"), f"m{i}", f"{i:064d}",
                    40, 30, None, None, None, 1, [])
        for i in offsets
    ]  # fmt: skip
    tables = assemble(results, [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS)
    table = delta.create_table(root, "media")
    table.update_incremental()
    delta.append(table, "media", tables.media, [delta.AppVersion(app, max(offsets))])


def test_the_chaos_poller_reports_a_row_shown_twice_and_a_row_that_vanished(tmp_path):
    """The chaos trial's reader (load_tests/table_poller.py) is a real reader: its silence in a
    trial means something."""
    from deltalake import DeltaTable

    from load_tests.table_poller import Watch

    root = str(tmp_path)
    _media_with_sources(root, [0, 1, 2], app="a")
    watch = Watch()
    watch.poll(root)
    _media_with_sources(root, [2, 3], app="b")  # record 2 twice: two writers without a fence
    DeltaTable(str(tmp_path / "media")).delete("media_id = 'm0'")  # a row a reader had seen
    watch.poll(root)
    found = watch.found
    assert found.polls == 2 and found.most_rows == 4
    doubled = {(d["what"], d["value"]) for d in found.doubled_seen}
    assert doubled == {("media_id in media", "m2"), ("uri in media", "/cam/2.jpg"),
                       ("source in media+failures", "t/0/2")}  # fmt: skip
    assert [(f["table"], f["source"]) for f in found.lost_seen] == [("media", "t/0/0")]


def test_the_chaos_diagnosis_names_the_commits_and_files_of_a_doubled_record(tmp_path):
    """What a broken chaos trial leaves for study: the files holding the record, and its
    partition's commits with their application transaction versions."""
    from load_tests.chaos_diagnose import diagnose

    root = str(tmp_path)
    _media_with_sources(root, [0, 1, 2], app="trapline:g:t:0")
    _media_with_sources(root, [2, 3], app="trapline:g:t:0")
    found = diagnose(root, "t", {"t/0/2": "doubled at the end"}, [], [])
    holding = [(f["table"], f["version"], f["data_change"]) for f in found["files_holding"]]
    assert holding == [("media", 1, True), ("media", 2, True)]
    commits = found["partitions"]["0"]["commits"]["2"]["media"]
    assert [(version, txn, rows) for version, _, txn, rows in commits] == [(1, 2, 3), (2, 3, 2)]
    assert found["tables_hold_up_to"]["0"]["media"] == 3  # the last offset its log claims
