"""Service mode against a real Kafka-protocol broker: events in, each row exactly once.

Uses the bundled sample photos (real JPEGs with EXIF, one corrupt) and the demo models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.servers import TEST_SESSION_TIMEOUT_MS

from trapline.pipelines import delta
from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.adapters import kafka_io
from trapline.services.run.stream import StreamWorker
from trapline.services.run.workers import build_pipeline
from trapline.services.settings import Settings
from trapline.services.tools.submit import submit_folder

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "photos"


def settings_for(tansu, topic: str, group: str, **overrides) -> Settings:
    return Settings(
        kafka_bootstrap=tansu.bootstrap,
        uploads_topic=topic,
        dlq_topic=f"{topic}.dlq",
        consumer_group=group,
        session_timeout_ms=TEST_SESSION_TIMEOUT_MS,
        batch_max_records=overrides.pop("batch_max_records", 8),
        commit_interval_s=overrides.pop("commit_interval_s", 0.5),
        sequence_hold_s=overrides.pop("sequence_hold_s", 1.0),  # tests: a quiet event closes fast
        workers=0,
        **overrides,
    )


def run_worker(settings: Settings, out: Path, **kwargs) -> StreamWorker:
    worker = StreamWorker(settings, str(out), build_pipeline(settings), **kwargs)
    worker.run(idle_exit_s=6)
    return worker


def rows(out: Path, table: str) -> list[dict]:
    return read_table(str(out), table).to_pylist()


@pytest.fixture
def card(tmp_path) -> Path:
    """A copy of one deployment of the sample (with its corrupt file)."""
    target = tmp_path / "card" / "cam-b"
    shutil.copytree(SAMPLE / "deployment-b", target)
    return target


def send_raw(tansu, topic: str, *values: bytes, key: bytes = b"cam-b") -> None:
    producer = kafka_io.make_producer(tansu.bootstrap)
    kafka_io.wait_delivered([producer.send(topic, key=key, value=v) for v in values])
    producer.close()


def test_every_event_ends_in_media_or_failures_once_and_bad_ones_reach_the_dlq(
    tansu, kafka_topic, card, tmp_path
):
    topic = kafka_topic("uploads", partitions=2)
    report = submit_folder(str(card.parent), tansu.bootstrap, topic, "cam-b")
    photos = report.submitted
    send_raw(tansu, topic, b"{not json", b'{"schema": "trapline.upload/9"}')
    first_photo = sorted(p for p in card.glob("*.jpg") if p.name != "corrupt.jpg")[0]
    again = encode_upload(Upload(uri=first_photo.resolve().as_uri(), deployment_id="cam-b"))
    send_raw(tansu, topic, again)  # the same bytes announced twice: one media row only

    settings = settings_for(tansu, topic, "g-exactly-once")
    worker = run_worker(settings, tmp_path / "out")

    media, failures = rows(tmp_path / "out", "media"), rows(tmp_path / "out", "failures")
    kinds = sorted(f["kind"] for f in failures)
    assert (
        len(media) == len({m["media_id"] for m in media}) == photos - 1
    )  # all but the corrupt one
    assert kinds == sorted(
        ["malformed_json", "unknown_schema", "duplicate", kinds_of_corrupt(failures)]
    )
    assert worker.stats.records == photos + 3
    dlq = kafka_io.read_topic(tansu.bootstrap, f"{topic}.dlq", 4, timeout_s=10)
    reasons = sorted(kafka_io.DeadLetterRecord.from_record(r).kind for r in dlq)
    assert reasons == kinds  # every failures row has its dead letter, and nothing else does
    assert b"{not json" in [r.value for r in dlq]
    for name in delta.WRITE_ORDER:  # drained: the next to open a table reads one checkpoint
        last_checkpoint = tmp_path / "out" / name / "_delta_log" / "_last_checkpoint"
        assert (
            json.loads(last_checkpoint.read_text())["version"]
            == delta.open_table(str(tmp_path / "out"), name).version()
        )


def kinds_of_corrupt(failures: list[dict]) -> str:
    (corrupt,) = [f for f in failures if f["uri"].endswith("corrupt.jpg")]
    return corrupt["kind"]


def test_a_crash_between_write_and_commit_duplicates_nothing(
    tansu, kafka_topic, card, tmp_path, monkeypatch
):
    topic = kafka_topic("uploads", partitions=1)
    submitted = submit_folder(str(card.parent), tansu.bootstrap, topic, "cam-b").submitted
    settings = settings_for(tansu, topic, "g-crash", batch_max_records=4)

    def crash(*args, **kwargs):
        raise SystemExit("worker killed before its offset commit")

    monkeypatch.setattr(kafka_io, "commit_offsets", crash)
    with pytest.raises(SystemExit):
        run_worker(settings, tmp_path / "out")
    written = rows(tmp_path / "out", "media")
    assert 0 < len(written) < submitted  # one batch is in the tables, its offsets are not committed
    monkeypatch.undo()

    run_worker(settings, tmp_path / "out")  # a new worker of the same group resumes from storage
    media, failures = rows(tmp_path / "out", "media"), rows(tmp_path / "out", "failures")
    assert len(media) + len(failures) == submitted
    assert len({m["media_id"] for m in media}) == len(media)
    assert not [f for f in failures if f["kind"] == "duplicate"]


def test_a_crash_between_two_tables_commits_replays_exactly_the_range_the_first_holds(
    tansu, kafka_topic, card, tmp_path, monkeypatch
):
    """Killed after observations, events and failures were committed but before media: the next
    worker resumes after media's version, replays exactly up to the others' and skips them."""
    topic = kafka_topic("uploads", partitions=1)
    submitted = submit_folder(str(card.parent), tansu.bootstrap, topic, "cam-b").submitted
    settings = settings_for(tansu, topic, "g-half", batch_max_records=5)
    real_append = delta.append

    def die_before_media(table, name, *args, **kwargs):
        if name == "media":
            raise SystemExit("killed between two tables' commits")
        return real_append(table, name, *args, **kwargs)

    monkeypatch.setattr(delta, "append", die_before_media)
    with pytest.raises(SystemExit):
        run_worker(settings, tmp_path / "out")
    assert rows(tmp_path / "out", "observations") and not rows(tmp_path / "out", "media")
    monkeypatch.undo()

    run_worker(settings, tmp_path / "out")
    media, failures = rows(tmp_path / "out", "media"), rows(tmp_path / "out", "failures")
    observations = rows(tmp_path / "out", "observations")
    events = rows(tmp_path / "out", "events")
    assert len(media) + len(failures) == submitted
    assert len({m["media_id"] for m in media}) == len(media)
    assert len({f["uri"] for f in failures}) == len(failures)
    assert len({o["observation_id"] for o in observations}) == len(observations)
    assert len({e["event_id"] for e in events}) == len(events)
    assert {o["media_id"] for o in observations} <= {m["media_id"] for m in media}


def test_a_burst_straddling_commit_boundaries_is_one_event_as_in_a_folder_run(
    tansu, kafka_topic, card, tmp_path
):
    """Commits of 2 records cut the sample's 3-photo bursts; holding each deployment's last
    event back until it is quiet gives the folder run's events, ids included."""
    from trapline.services.run.folder import run_folder

    folder = run_folder(str(card.parent), str(tmp_path / "folder"), Settings(workers=0))
    expected = sorted(
        (e["event_id"], e["media_count"])
        for e in read_table(str(tmp_path / "folder"), "events").to_pylist()
    )
    assert folder.events == len(expected) and max(n for _, n in expected) >= 3  # bursts exist

    def stream_events(hold_s: float, name: str) -> list[tuple[str, int]]:
        topic = kafka_topic("uploads", partitions=1)
        submit_folder(str(card.parent), tansu.bootstrap, topic, "cam-b")
        settings = settings_for(
            tansu, topic, f"g-{name}", batch_max_records=2, poll_max_records=2,
            sequence_hold_s=hold_s,
        )  # fmt: skip
        run_worker(settings, tmp_path / name)
        return sorted((e["event_id"], e["media_count"]) for e in rows(tmp_path / name, "events"))

    assert stream_events(1.0, "held") == expected
    assert stream_events(0.0, "cut") != expected  # without holding back, boundaries split bursts
