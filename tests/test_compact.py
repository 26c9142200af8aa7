"""`trapline compact`: same rows, fewer files, and no reader ever sees a half-compacted folder."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines.flow import assemble
from trapline.pipelines.readers import read_table
from trapline.pipelines.sinks import ParquetSink
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import MediaRef, MediaResult
from trapline.services import compact as compact_module
from trapline.services.compact import UnsafeOnObjectStore, compact
from trapline.services.settings import Settings

pytest_plugins = ["s3_fixtures"]
MODELS = ModelNames("det", "1", "cls", "1")


def media(*ids: str, day: int = 1) -> object:
    results = [
        MediaResult(
            MediaRef(uri=f"/p/{i}.jpg", deployment_id="cam"),
            i,
            i,
            10,
            10,
            datetime(2024, 6, day, 12, n),
            None,
            None,
            1,
            [],
        )  # fmt: skip
        for n, i in enumerate(ids)
    ]
    return assemble(results, [], Settings(), MODELS, DEEPFAUNE_LABELS).media


def write_segments(root: str, count: int) -> ParquetSink:
    sink = ParquetSink(root)
    for n in range(count):
        sink.create(
            "media", media(f"m{n}a", f"m{n}b"), f"t-00000-{n:020d}", {"last_offset": str(n)}
        )
    sink.create(
        "media", media("other", day=2), "t-00000-99", {"last_offset": "99"}
    )  # 1 file: left alone
    return sink


def test_compaction_keeps_every_row_once_in_one_file_per_folder(tmp_path):
    sink = write_segments(str(tmp_path), 5)
    before = sorted(read_table(str(tmp_path), "media").column("media_id").to_pylist())

    report = compact(str(tmp_path), ["media"])

    assert (report.folders, report.files_before, report.files_after, report.rows) == (1, 5, 1, 10)
    files = [Path(p) for p in sink.part_files("media")]
    assert sorted(f.parent.name for f in files) == ["date=2024-06-01", "date=2024-06-02"]
    assert sorted(pd.read_parquet(tmp_path / "media")["media_id"]) == before  # a plain reader
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".compacting")]
    merged = next(f for f in files if f.name.startswith("part-compact-"))
    assert pq.read_schema(merged).metadata[b"trapline.replaces"].count(b"\n") == 4


def test_a_file_written_during_compaction_is_not_lost(tmp_path, monkeypatch):
    """A worker adds a segment while the folder is merged: the swap is undone and retried."""
    sink = write_segments(str(tmp_path), 3)
    real_merged = compact_module._merged
    calls = []

    def merge_while_a_worker_writes(sink_, table, files):
        if not calls:
            sink.create(
                "media", media("late"), "t-00000-00000000000000000777", {"last_offset": "777"}
            )
        calls.append(files)
        return real_merged(sink_, table, files)

    monkeypatch.setattr(compact_module, "_merged", merge_while_a_worker_writes)
    report = compact(str(tmp_path), ["media"])

    assert report.retried == 1 and len(calls) == 2
    ids = read_table(str(tmp_path), "media").column("media_id").to_pylist()
    assert "late" in ids and len(ids) == len(set(ids)) == 8


def test_on_s3_our_readers_never_see_the_inputs_twice(s3, s3_bucket, monkeypatch):
    root = f"s3://{s3_bucket('results')}/results"
    write_segments(root, 3)
    removed = []
    monkeypatch.setattr(s3, "rm", lambda path, **kw: removed.append(path))  # crash before deleting

    compact(root, ["media"], allow_brief_duplicates=True)

    assert len(removed) == 3  # the inputs are still there ...
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert len(ids) == len(set(ids)) == 7  # ... and read_table keeps only the merged file's rows
    monkeypatch.undo()
    compact(
        root, ["media"], allow_brief_duplicates=True
    )  # a second run finishes the job: merged + leftovers -> one file
    assert sorted(read_table(root, "media").column("media_id").to_pylist()) == sorted(ids)


def test_on_s3_in_place_compaction_is_refused_unless_asked_and_a_copy_changes_nothing_visible(
    s3, s3_bucket
):
    root = f"s3://{s3_bucket('results')}/results"
    write_segments(root, 3)
    before = sorted(read_table(root, "media").column("media_id").to_pylist())
    with pytest.raises(UnsafeOnObjectStore, match="--out"):
        compact(root, ["media"])
    copy = f"s3://{s3_bucket('compacted')}/results"
    report = compact(root, ["media"], out=copy)
    assert (report.folders, report.files_after) == (2, 2)
    assert len(ParquetSink(root).part_files("media")) == 4  # the original is untouched
    assert len(ParquetSink(copy).part_files("media")) == 2
    assert sorted(read_table(copy, "media").column("media_id").to_pylist()) == before
