"""A model backend that answers Triton INTERNAL and never recovers: the stream worker keeps the
records and retries with capped backoff, says so on every retry (how many, for how long) and
counts each retry, and writes no failures row; once the model answers, every photo lands once.
Driven from an in-memory source (tests/support/memory_kafka.py) with a clock the test moves."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from support.memory_kafka import MemoryConsumer, MemoryLog, MemoryProducer
from tritonclient.utils import InferenceServerException

from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.run import metrics
from trapline.services.run.stream import MAX_RETRY_DELAY_S, StreamWorker
from trapline.services.run.workers import build_pipeline
from trapline.services.settings import Settings

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "photos"
TOPIC = "uploads"


class FailingDetector:
    """The real detector, except that `detect` answers INTERNAL while `failing` is set."""

    def __init__(self, real):
        self.real = real
        self.failing = True
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def detect(self, batch):
        self.calls += 1
        if self.failing:
            raise InferenceServerException(
                msg="trapline_detector: CUDA error: an illegal memory access was encountered",
                status="StatusCode.INTERNAL",
            )
        return self.real.detect(batch)


def test_an_internal_error_that_never_clears_is_retried_loudly_and_counted_never_failed(
    tmp_path, caplog
):
    card = tmp_path / "card" / "cam-b"
    shutil.copytree(SAMPLE / "deployment-b", card)
    log = MemoryLog()
    paths = sorted(card.iterdir())
    for path in paths:
        event = Upload(uri=path.resolve().as_uri(), deployment_id="cam-b")
        log.append(TOPIC, 0, encode_upload(event), key=b"cam-b")
    settings = Settings(
        consumer_group="g", uploads_topic=TOPIC, dlq_topic=f"{TOPIC}.dlq", workers=0,
        metrics_port=0, commit_interval_s=0, sequence_hold_s=0,
    )  # fmt: skip
    pipeline = build_pipeline(settings)
    pipeline.detector = detector = FailingDetector(pipeline.detector)
    now = [0.0]
    out = tmp_path / "out"
    worker = StreamWorker(
        settings, str(out), pipeline, clock=lambda: now[0],
        consumer=MemoryConsumer(log, [(TOPIC, 0)]), producer=MemoryProducer(log),
    )  # fmt: skip
    retries = metrics.CHECKPOINT_RETRIES.labels("model backend")
    stage_errors = metrics.RETRYABLE_ERRORS.labels("detect")
    retries_before, stage_before = retries._value.get(), stage_errors._value.get()

    with caplog.at_level(logging.INFO, logger="trapline.services.run.stream"):
        while not worker._pending():  # one turn of the loop: poll, assignment, buffer
            polled = worker.consumer.poll()
            worker._apply_rebalance()
            for tp, records in polled.items():
                worker._accept(tp, records)
        for _ in range(12):  # 12 retries: past the 60 s cap, as an outage of half an hour would be
            assert worker._due()  # the backoff has passed
            worker.checkpoint()
            assert not worker._due()  # and is in force again
            now[0] += MAX_RETRY_DELAY_S
        warnings = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 12 and detector.calls == 12
        assert "model backend unavailable" in warnings[-1]
        assert "INTERNAL" in warnings[-1] and "retry 12, failing for 660 s" in warnings[-1]
        assert "retrying in 60 s" in warnings[-1]  # the backoff's cap
        assert retries._value.get() - retries_before == 12
        assert stage_errors._value.get() - stage_before == 12
        assert read_table(str(out), "failures").num_rows == 0  # nothing failed
        assert read_table(str(out), "media").num_rows == 0  # nor written: the photos wait
        assert worker.stats.failure_rows == worker.stats.dead_letters == 0

        detector.failing = False
        worker.checkpoint(drain=True)
    assert any("checkpoints succeed again after 720 s and 12 retries" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    media = read_table(str(out), "media").column("uri").to_pylist()
    failed = read_table(str(out), "failures").to_pylist()
    assert len(media) + len(failed) == len(paths) and len(set(media)) == len(media)
    assert all(row["kind"] != "model_error" for row in failed)  # the corrupt file, not the outage
