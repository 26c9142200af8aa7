"""Against a real Kafka-protocol broker (Tansu): submit, consume as a group, dead-letter."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import pytest
from PIL import Image

from trapline.pipelines.uploads import SCHEMA_V1, parse_upload
from trapline.services.adapters import kafka_io
from trapline.services.devstack.tansu import ServerStartError, start_tansu
from trapline.services.tools.submit import submit_folder


def write_jpegs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (40 * index, 120, 200)).save(buffer, "JPEG")
        path = folder / f"IMG_{index:04d}.JPG"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def test_submit_folder_produces_one_keyed_event_per_photo_read_back_by_a_group(
    tansu, kafka_topic, kafka_consumer, tmp_path
):
    photos = write_jpegs(tmp_path / "card", 5)
    topic = kafka_topic("uploads", partitions=3)

    report = submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic, "cam-07")

    assert (report.files, report.submitted, report.failures) == (5, 5, [])
    consumer = kafka_consumer([topic])
    records: list = []
    deadline = time.monotonic() + 12  # a new group on Tansu waits half the session timeout
    while len(records) < 5 and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=250).values():
            records.extend(batch)
    consumer.commit()
    assert len(records) == 5
    assert len({r.partition for r in records}) == 1  # one key, one partition: order is kept
    by_name = {}
    for record in records:
        assert record.key == b"cam-07"
        event = parse_upload(
            record.value, source=f"{topic}/{record.partition}/{record.offset}", key=record.key
        )
        assert event.failures == []
        [parsed] = event.events
        assert parsed.attributes["original_name"] == parsed.ref.uri.rsplit("/", 1)[1]
        assert parsed.uploaded_at is not None and parsed.uploaded_at.utcoffset() is not None
        assert parsed.ref.timestamp is None  # the pipeline reads EXIF
        by_name[parsed.attributes["original_name"]] = parsed
    for path in photos:
        parsed = by_name[path.name]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert parsed.ref.uri == f"file://{path}"
        assert (parsed.ref.media_id, parsed.sha256, parsed.ref.deployment_id) == (
            digest,
            digest,
            "cam-07",
        )
    assert b'"schema":"' + SCHEMA_V1.encode() in records[0].value


def test_submit_copies_content_addressed_and_resubmits_idempotently(tansu, kafka_topic, tmp_path):
    [photo] = write_jpegs(tmp_path / "card" / "cam-01", 1)
    store = tmp_path / "store"
    topic = kafka_topic("uploads", partitions=1)

    first = submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic, None, copy_to=str(store))
    second = submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic, None, copy_to=str(store))

    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    copy = store / "cam-01" / f"{digest}.jpg"
    assert copy.read_bytes() == photo.read_bytes()
    assert (first.copied, second.copied, second.already_copied) == (1, 0, 1)
    values = [
        parse_upload(r.value).events[0] for r in kafka_io.read_topic(tansu.bootstrap, topic, 2)
    ]
    assert [v.ref.uri for v in values] == [f"file://{copy}"] * 2
    assert [v.ref.media_id for v in values] == [digest, digest]  # the same media, recognisably
    assert [v.ref.deployment_id for v in values] == ["cam-01", "cam-01"]  # from the folder


def test_submit_reports_unreadable_and_unsupported_files(tansu, kafka_topic, tmp_path):
    card = tmp_path / "card"
    write_jpegs(card, 2)
    (card / "big.jpg").write_bytes(b"\xff\xd8" + b"\0" * 5000)
    (card / "notes.txt").write_text("not a photo")
    (card / ".DS_Store").write_bytes(b"\0")
    topic = kafka_topic("uploads", partitions=1)

    report = submit_folder(str(card), tansu.bootstrap, topic, "cam-07", max_file_bytes=4000)

    assert (report.files, report.submitted, report.hidden) == (3, 2, 1)
    assert sorted((f.stage, f.kind, Path(f.uri).name) for f in report.failures) == [
        ("read", "too_large", "big.jpg"),
        ("source", "unsupported_type", "notes.txt"),
    ]


def test_submit_refuses_a_deployment_that_is_not_a_safe_id(tansu, tmp_path):
    write_jpegs(tmp_path, 1)
    with pytest.raises(ValueError, match="deployment 'cam/07'"):
        submit_folder(str(tmp_path), tansu.bootstrap, "unused", "cam/07")


def test_dead_letter_keeps_original_bytes_and_says_why_in_headers(tansu, kafka_topic):
    uploads, dlq = kafka_topic("uploads", partitions=2), kafka_topic("dlq", partitions=1)
    bad = b'{"schema": "trapline.upload/1", "uri": "s3://b/k.jpg", "deployment_id": "cam 7"}\xff'
    producer = kafka_io.make_producer(tansu.bootstrap)
    try:
        producer.send(uploads, key=b"cam 7", value=bad).get(timeout=10)
        [record] = kafka_io.read_topic(tansu.bootstrap, uploads, 1)
        [failure] = kafka_io.parse_record(record).failures
        dead_letter = kafka_io.DeadLetter(producer, dlq)
        dead_letter.send_record(record, failure).get(timeout=10)
    finally:
        producer.close()

    [back] = kafka_io.read_topic(tansu.bootstrap, dlq, 1)
    letter = kafka_io.DeadLetterRecord.from_record(back)
    assert letter.value == bad and letter.key == b"cam 7"
    assert (letter.kind, letter.stage) == ("malformed_json", "event")
    assert letter.message == failure.message and "not UTF-8" in letter.message
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        uploads, record.partition, record.offset,
    )  # fmt: skip
    assert letter.failed_at is not None


def test_dead_letter_takes_origin_from_the_failure_source(tansu, kafka_topic):
    dlq = kafka_topic("dlq", partitions=1)
    raw = b'{"schema": "trapline.upload/9"}'
    [failure] = parse_upload(raw, source="trapline.uploads/4/1234").failures
    producer = kafka_io.make_producer(tansu.bootstrap)
    try:
        kafka_io.DeadLetter(producer, dlq).send(failure, key=b"cam-1").get(timeout=10)
    finally:
        producer.close()
    letter = kafka_io.DeadLetterRecord.from_record(kafka_io.read_topic(tansu.bootstrap, dlq, 1)[0])
    assert (letter.value, letter.kind) == (raw, "unknown_schema")
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        "trapline.uploads",
        4,
        1234,
    )


def test_ensure_topics_creates_only_missing_topics(tansu):
    name = f"ensure.{time.monotonic_ns()}"
    assert kafka_io.ensure_topics(tansu.bootstrap, [name], 2) == [name]
    assert kafka_io.ensure_topics(tansu.bootstrap, [name], 2) == []
    assert name in kafka_io.list_topics(tansu.bootstrap)


def test_tansu_on_a_taken_port_fails_with_its_log(tansu):
    with pytest.raises(ServerStartError, match="AddrInUse|Address in use|port in use"):
        start_tansu(tansu.port, timeout_s=5)
    assert tansu.alive()


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(kafka_io.KafkaUnavailable, match="cannot reach Kafka at 127.0.0.1:9"):
        kafka_io.make_producer("127.0.0.1:9", bootstrap_timeout_ms=500)


def test_password_never_reaches_the_logs(caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    with pytest.raises(kafka_io.KafkaUnavailable):
        kafka_io.list_topics(
            "127.0.0.1:9", timeout_s=0.5, security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN", sasl_plain_username="trap", sasl_plain_password="hunter2",
        )  # fmt: skip
    assert "sasl_plain_username" in caplog.text and "hunter2" not in caplog.text


def test_security_settings_are_checked_and_secrets_masked():
    options = kafka_io.security_options({"security_protocol": "SASL_SSL", "ssl_cafile": None})
    assert options == {"security_protocol": "SASL_SSL"}
    with pytest.raises(TypeError, match="sasl_password"):
        kafka_io.security_options({"sasl_password": "typo"})
    shown = kafka_io.redacted({"sasl_plain_password": "hunter2", "sasl_plain_username": "trap"})
    assert shown == {"sasl_plain_password": "***", "sasl_plain_username": "trap"}


KAFKA_PYTHON_PARKED_STALL = (
    "kafka-python 3.0.12: a resumed partition whose parsed records were parked is never read again"
)


@pytest.mark.parametrize(
    "resume",
    [
        "resume_partitions",
        pytest.param(
            "plain", marks=pytest.mark.xfail(strict=True, reason=KAFKA_PYTHON_PARKED_STALL)
        ),
    ],
)
def test_a_partition_paused_with_records_in_hand_is_read_to_its_end_once_resumed(
    tansu, kafka_topic, resume
):
    """The stream worker pauses a full partition (StreamWorker._hold_back). kafka-python 3.0.12
    parks the parsed records it still holds for a paused partition and restores them only if
    no other partition's records were returned meanwhile: after a plain `resume()` it is never
    read again. `kafka_io.resume_partitions` drops them so they are fetched again; "plain"
    shows the bug (a strict xfail: it fails the day a kafka-python release fixes it)."""
    topic = kafka_topic("paused", partitions=2)
    producer = kafka_io.make_producer(tansu.bootstrap)
    sent = 60
    kafka_io.wait_delivered(
        [producer.send(topic, value=b"%d" % i, partition=p) for p in (0, 1) for i in range(sent)]
    )
    producer.close()
    consumer = kafka_io.make_consumer(tansu.bootstrap, None, max_poll_records=5)
    consumer.assign([kafka_io.TopicPartition(topic, p) for p in (0, 1)])
    read: dict[int, list[int]] = {0: [], 1: []}

    def poll_until(done, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                read[tp.partition] += [r.offset for r in records]

    try:
        poll_until(lambda: read[0] or read[1], 20)
        held = 0 if read[0] else 1  # its fetch's other records are parsed and held
        other = 1 - held
        assert read[held] == [0, 1, 2, 3, 4]
        paused = kafka_io.TopicPartition(topic, held)
        consumer.pause(paused)
        poll_until(lambda: len(read[other]) == sent, 20)  # meanwhile the other is read
        assert read[other] == list(range(sent)) and read[held] == [0, 1, 2, 3, 4]
        if resume == "plain":
            consumer.resume(paused)
        else:
            kafka_io.resume_partitions(consumer, [paused])
        poll_until(lambda: len(read[held]) == sent, 8)  # well under a second when it works
        assert read[held] == list(range(sent))
    finally:
        consumer.close()
