"""Tables: schemas hold, files are complete Parquet that pandas, Polars and DuckDB read."""

from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines.flow import assemble
from trapline.pipelines.readers import read_table
from trapline.pipelines.sinks import ParquetSink
from trapline.pipelines.tables import SCHEMA_VERSION, TABLES, ModelNames
from trapline.pipelines.types import Detection, Failure, MediaRef, MediaResult
from trapline.services.settings import Settings

MODELS = ModelNames("det", "1", "cls", "2")


def result(media_id: str, when: datetime | None, *detections: Detection) -> MediaResult:
    ref = MediaRef(uri=f"/photos/d1/{media_id}.jpg", deployment_id="d1")
    return MediaResult(
        ref, media_id, media_id * 4, 4000, 3000, when, "Make", "Model", 123, list(detections)
    )


def fox() -> Detection:
    logits = np.zeros(38, np.float32)
    logits[DEEPFAUNE_LABELS.index("fox")] = 9
    return Detection("animal", 0.93, (0.1, 0.2, 0.3, 0.4), "fox", 0.99, ["fox"], [0.99], logits)


def test_assemble_builds_every_table_with_its_schema_and_marks_duplicates():
    results = [
        result("a", datetime(2024, 6, 1, 22, 0, 0), fox()),
        result("b", datetime(2024, 6, 1, 22, 0, 5)),
        result("a", datetime(2024, 6, 1, 22, 0, 0)),  # same bytes found twice
        result("c", None, Detection("person", 0.8, (0.5, 0.5, 0.1, 0.3))),
    ]
    failure = Failure("/photos/d1/bad.jpg", "d1", None, "decode", "truncated", "truncated")
    settings = Settings(utc_offset="+02:00")
    tables = assemble(results, [failure], settings, MODELS, DEEPFAUNE_LABELS)
    for name, table in tables.as_dict().items():
        assert table.schema.equals(TABLES[name]), name
    media = {row["media_id"]: row for row in tables.media.to_pylist()}
    assert set(media) == {"a", "b", "c"}
    assert media["a"]["timestamp"] == datetime(2024, 6, 1, 20, 0, 0, tzinfo=timezone.utc)
    assert media["a"]["event_id"] == media["b"]["event_id"] != media["c"]["event_id"]
    assert media["a"]["event_label"] == "fox" and media["c"]["observation_type"] == "human"
    assert media["c"]["timestamp_source"] == "none"
    kinds = sorted(tables.failures.column("kind").to_pylist())
    assert kinds == ["duplicate", "truncated"]
    observation = tables.observations.to_pylist()[0]
    assert (
        observation["scientific_name"] == "Vulpes vulpes"
        and observation["classified_by"] == "cls/2"
    )


def test_parts_are_hive_partitioned_and_readable_by_pandas_polars_and_duckdb(tmp_path):
    when = datetime(2024, 6, 1, 22, 0, 0)
    tables = assemble(
        [result("a", when, fox()), result("b", None)], [], Settings(), MODELS, DEEPFAUNE_LABELS
    )
    sink = ParquetSink(str(tmp_path))
    paths = sink.write("media", tables.media, "run1")
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in paths) == [
        "media/deployment=d1/date=2024-06-01/part-run1.parquet",
        "media/deployment=d1/date=unknown/part-run1.parquet",
    ]
    assert pq.read_schema(paths[0]).metadata[b"trapline.schema_version"] == SCHEMA_VERSION.encode()
    assert sorted(pd.read_parquet(tmp_path / "media")["media_id"]) == ["a", "b"]
    assert (
        pl.read_parquet(str(tmp_path / "media" / "**" / "*.parquet"), hive_partitioning=True).height
        == 2
    )
    rows = duckdb.sql(
        f"select date, count(*) from read_parquet('{tmp_path}/media/*/*/*.parquet', hive_partitioning=true)"
        " group by date order by date"
    )
    assert rows.fetchall() == [("2024-06-01", 1), ("unknown", 1)]
    assert read_table(str(tmp_path), "media").num_rows == 2
    assert not list(tmp_path.rglob(".tmp-*"))


def test_an_empty_table_still_leaves_one_readable_file(tmp_path):
    tables = assemble([result("a", None)], [], Settings(), MODELS, DEEPFAUNE_LABELS)
    ParquetSink(str(tmp_path)).write("failures", tables.failures, "run1")
    assert len(pd.read_parquet(tmp_path / "failures")) == 0


def test_a_rerun_replaces_the_previous_parts(tmp_path):
    tables = assemble([result("a", None)], [], Settings(), MODELS, DEEPFAUNE_LABELS)
    sink = ParquetSink(str(tmp_path))
    first = sink.write("media", tables.media, "run1")
    second = sink.replace("media", tables.media, "run2")
    assert [Path(p).name for p in sink.part_files("media")] == ["part-run2.parquet"]
    assert first != second


def test_create_writes_each_partition_file_only_once(tmp_path):
    tables = assemble([result("a", None)], [], Settings(), MODELS, DEEPFAUNE_LABELS)
    sink = ParquetSink(str(tmp_path))
    [name] = sink.create(
        "media", tables.media, "t-00000-00000000000000000010", {"last_offset": "19"}
    )
    again = assemble([result("z", None)], [], Settings(), MODELS, DEEPFAUNE_LABELS)
    assert sink.create(
        "media", again.media, "t-00000-00000000000000000010", {"last_offset": "19"}
    ) == [name]
    assert sink.file_metadata(name)["last_offset"] == "19"
    assert read_table(str(tmp_path), "media", columns=["media_id"]).column(0).to_pylist() == ["a"]
    assert sink.file_metadata("media/nope.parquet") is None
    assert not list(tmp_path.rglob(".tmp-*"))


def test_the_same_bytes_under_two_producer_ids_are_counted_once_and_reported():
    first, again = result("cam-a-0001", None), result("upload-77", None)
    again.sha256 = first.sha256  # a card uploaded twice by a portal that makes its own ids
    tables = assemble([first, again], [], Settings(), MODELS, DEEPFAUNE_LABELS)
    assert tables.media.column("media_id").to_pylist() == ["cam-a-0001"]
    [duplicate] = tables.failures.to_pylist()
    assert duplicate["kind"] == "duplicate" and "sha256" in duplicate["message"]
