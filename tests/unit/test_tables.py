"""Tables: schemas hold; Delta tables that deltalake, Polars and DuckDB read through the log."""

from datetime import date, datetime, timezone

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
from deltalake import DeltaTable

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines.flow import assemble
from trapline.pipelines.readers import CommittedInputs, DeploymentRows, read_table
from trapline.pipelines.tables import SCHEMA_VERSION, TABLES, ModelNames
from trapline.pipelines.types import Detection, Failure, MediaRef, MediaResult
from trapline.services.run.folder import write_tables
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
    tables = assemble(results, [failure], settings.stage_options(), MODELS, DEEPFAUNE_LABELS)
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


def test_delta_tables_are_hive_partitioned_and_readable_by_deltalake_polars_and_duckdb(tmp_path):
    when = datetime(2024, 6, 1, 22, 0, 0)
    tables = assemble(
        [result("a", when, fox()), result("b", None)],
        [],
        Settings().stage_options(),
        MODELS,
        DEEPFAUNE_LABELS,
    )
    write_tables(tables, str(tmp_path), Settings())
    folders = sorted(
        p.parent.relative_to(tmp_path).as_posix() for p in (tmp_path / "media").rglob("*.parquet")
    )
    assert folders == [
        "media/deployment_id=d1/date=2024-06-01",
        "media/deployment_id=d1/date=__HIVE_DEFAULT_PARTITION__",
    ]
    assert (
        f"schema version {SCHEMA_VERSION}"
        in DeltaTable(str(tmp_path / "media")).metadata().description
    )
    assert sorted(DeltaTable(str(tmp_path / "media")).to_pandas()["media_id"]) == ["a", "b"]
    assert pl.read_delta(str(tmp_path / "media")).height == 2
    media = DeltaTable(str(tmp_path / "media")).to_pyarrow_dataset()  # noqa: F841 - duckdb reads it
    rows = duckdb.sql("select date, count(*) from media group by date order by date nulls last")
    assert rows.fetchall() == [(date(2024, 6, 1), 1), (None, 1)]
    back = read_table(str(tmp_path), "media")
    assert back.schema.equals(TABLES["media"], check_metadata=True) and back.num_rows == 2


def test_a_plain_parquet_reader_sees_uncommitted_files_the_log_hides(tmp_path):
    """What docs/tables.md warns about: a file written but never committed (a crashed or
    refused commit) is in the folder, and only readers that go through the log skip it."""
    tables = assemble([result("a", None)], [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS)
    write_tables(tables, str(tmp_path), Settings())
    folder = next((tmp_path / "media").rglob("*.parquet")).parent
    pq.write_table(pq.read_table(next(folder.glob("*.parquet"))), folder / "part-orphan.parquet")
    assert read_table(str(tmp_path), "media").num_rows == 1
    assert pl.read_delta(str(tmp_path / "media")).height == 1
    assert len(pq.read_table(folder)) == 2  # the plain reader counts the orphan too


def test_a_table_read_as_of_an_earlier_version_shows_what_it_held_then(tmp_path):
    first = assemble([result("a", None)], [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS)
    write_tables(first, str(tmp_path), Settings())
    version = DeltaTable(str(tmp_path / "media")).version()
    second = assemble([result("b", None)], [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS)
    write_tables(second, str(tmp_path), Settings())
    latest = read_table(str(tmp_path), "media", columns=["media_id"]).column(0).to_pylist()
    then = read_table(str(tmp_path), "media", columns=["media_id"], version=version)
    assert sorted(latest) == ["a", "b"] and then.column(0).to_pylist() == ["a"]


def test_an_unwritten_table_reads_as_empty_with_its_schema(tmp_path):
    assert read_table(str(tmp_path), "failures").schema.equals(TABLES["failures"])
    assert read_table(str(tmp_path), "failures", columns=["uri"]).num_rows == 0


def test_writing_the_same_rows_again_adds_nothing(tmp_path):
    tables = assemble(
        [result("a", None, fox())], [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS
    )
    write_tables(tables, str(tmp_path), Settings())
    again = write_tables(tables, str(tmp_path), Settings())
    assert again.media.num_rows == again.observations.num_rows == 0
    assert read_table(str(tmp_path), "observations").num_rows == 1


def test_the_same_bytes_under_two_producer_ids_are_counted_once_and_reported():
    first, again = result("cam-a-0001", None), result("upload-77", None)
    again.sha256 = first.sha256  # a card uploaded twice by a portal that makes its own ids
    tables = assemble([first, again], [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS)
    assert tables.media.column("media_id").to_pylist() == ["cam-a-0001"]
    [duplicate] = tables.failures.to_pylist()
    assert duplicate["kind"] == "duplicate" and "sha256" in duplicate["message"]


def in_deployment(media_id: str, deployment_id: str) -> MediaResult:
    ref = MediaRef(uri=f"/photos/{deployment_id}/{media_id}.jpg", deployment_id=deployment_id)
    return MediaResult(ref, media_id, media_id * 4, 400, 300, None, "Make", "Model", 12, [])


def test_deployment_rows_reads_one_deployment_at_a_time_from_one_snapshot(tmp_path):
    """What the report and a folder run's restart walk: each deployment's rows alone (names
    that need escaping in a partition path too), the log read once, later commits not seen."""
    photos = [("a", "north"), ("b", "north"), ("c", "süd ost/2"), ("d", "east%")]
    first = assemble(
        [in_deployment(m, d) for m, d in photos],
        [],
        Settings().stage_options(),
        MODELS,
        DEEPFAUNE_LABELS,
    )
    write_tables(first, str(tmp_path), Settings())
    rows = DeploymentRows(str(tmp_path), "media", ["media_id", "deployment_id"])
    later = assemble(
        [in_deployment("e", "north")], [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS
    )
    write_tables(later, str(tmp_path), Settings())
    assert rows.deployments() == ["east%", "north", "süd ost/2"]
    assert sorted(rows.of("north").column("media_id").to_pylist()) == ["a", "b"]  # not e
    assert rows.of("süd ost/2").column("media_id").to_pylist() == ["c"]
    assert rows.of(["east%", "north"]).num_rows == 3 and rows.of([]).num_rows == 0
    whole = read_table(str(tmp_path), "media", columns=["media_id", "deployment_id"])
    assert rows.of("north").schema.equals(whole.schema, check_metadata=True)  # our types
    assert CommittedInputs(str(tmp_path)).of(["north"]) == {f"/photos/north/{m}.jpg" for m in "abe"}


def test_deployment_rows_of_an_unwritten_table_are_empty_with_its_columns(tmp_path):
    rows = DeploymentRows(str(tmp_path), "failures", ["uri"])
    assert rows.deployments() == [] and rows.of("north").schema.names == ["uri"]
