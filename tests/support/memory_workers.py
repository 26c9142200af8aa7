"""Stream workers driven from the in-memory source (support/memory_kafka.py) against real Delta
tables on disk: the worker, one turn of its loop, and the exactly-once check of the tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.memory_kafka import MemoryConsumer, MemoryLog, MemoryProducer
from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.run.stream import StreamWorker
from trapline.services.run.workers import build_pipeline
from trapline.services.settings import Settings

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "photos"
TOPIC = "uploads"


@pytest.fixture(scope="module")
def pipeline():
    return build_pipeline(Settings(workers=0))


@pytest.fixture
def uploads(tmp_path) -> MemoryLog:
    """Every file of the sample's deployment-b (one corrupt) as upload messages in partition 0."""
    card = tmp_path / "card" / "cam-b"
    shutil.copytree(SAMPLE / "deployment-b", card)
    log = MemoryLog()
    for path in sorted(card.iterdir()):
        event = Upload(uri=path.resolve().as_uri(), deployment_id="cam-b")
        log.append(TOPIC, 0, encode_upload(event), key=b"cam-b")
    return log


def settings(**overrides) -> Settings:
    values = dict(
        consumer_group="g", uploads_topic=TOPIC, dlq_topic=f"{TOPIC}.dlq", workers=0,
        metrics_port=0, commit_interval_s=0, sequence_hold_s=0, batch_max_records=500,
    )  # fmt: skip
    values.update(overrides)
    return Settings(**values)


def worker(
    log: MemoryLog, out: Path, pipeline, max_records: int = 500, **overrides
) -> StreamWorker:
    consumer = MemoryConsumer(log, [(TOPIC, 0)], max_records=max_records)
    return StreamWorker(
        settings(**overrides), str(out), pipeline, consumer=consumer, producer=MemoryProducer(log)
    )


def poll(w: StreamWorker) -> None:
    """One turn of the worker's loop without the checkpoint: poll, rebalance, buffer."""
    polled = w.consumer.poll()
    w._apply_rebalance()
    for tp, records in polled.items():
        w._accept(tp, records)


def accounted(out: Path) -> tuple[list[str], list[str]]:
    media = read_table(str(out), "media").column("media_id").to_pylist()
    failed = read_table(str(out), "failures").column("uri").to_pylist()
    return media, failed


def assert_exactly_once(out: Path, submitted: int) -> None:
    media, failed = accounted(out)
    assert len(media) == len(set(media)) and len(failed) == len(set(failed))
    assert len(media) + len(failed) == submitted
    observations = read_table(str(out), "observations").column("observation_id").to_pylist()
    assert len(observations) == len(set(observations))
    events = read_table(str(out), "events").column("event_id").to_pylist()
    assert len(events) == len(set(events))
