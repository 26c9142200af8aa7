"""The stream's commit path against the ways issue 36 found it losing or doubling photos:
records fetched past the resume point, a retry shorter than the batch that failed, a partition
that moves away and back, Kafka's committed offset ahead of the tables. Each staged exactly
with the in-memory source (support/memory_kafka.py) against real Delta tables on disk."""

from __future__ import annotations

import shutil

import pyarrow.compute as pc
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError
from support.memory_kafka import MemoryConsumer, MemoryLog, MemoryProducer
from support.memory_workers import (
    SAMPLE,
    TOPIC,
    accounted,
    assert_exactly_once,
    poll,
    settings,
    worker,
)

from trapline.pipelines import delta
from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.run import stream_buffer
from trapline.services.run.delta_sink import Batch, OffsetGap
from trapline.services.run.stream import StreamWorker

TP = TopicPartition(TOPIC, 0)


def photo_log(tmp_path, count: int, deployment: str = "cam-a") -> MemoryLog:
    """`count` distinct photos (the sample's, each with its own bytes) as uploads in partition 0."""
    card = tmp_path / "card" / deployment
    card.mkdir(parents=True)
    log = MemoryLog()
    for index in range(count):
        add_photo(log, card, index, deployment)
    return log


def add_photo(log: MemoryLog, card, index: int, deployment: str = "cam-a", same_as=None):
    """Upload photo `index` (bytes of the sample's, made distinct), or a copy of `same_as`'s
    bytes under a new name (a re-upload)."""
    source = sorted((SAMPLE / "deployment-a").glob("*.jpg"))[index % 5]
    path = card / f"{index:03d}-{source.name}"
    if same_as is not None:
        path.write_bytes(same_as.read_bytes())
    else:
        shutil.copy(source, path)
        path.write_bytes(path.read_bytes() + index.to_bytes(4, "big"))
    log.append(TOPIC, 0, encode_upload(Upload(uri=path.as_uri(), deployment_id=deployment)))
    return path


def test_records_fetched_past_the_resume_point_are_fetched_again_not_claimed(tmp_path, pipeline):
    """kill -9 lost photos: in the poll that assigned a partition, records came from Kafka's
    committed position, past the point the tables gave; the buffer kept them and the commit
    claimed the offsets in between, whose records it never had (at-most-once, silently)."""
    log = photo_log(tmp_path, 8)
    out = tmp_path / "out"
    w = worker(log, out, pipeline)
    poll(w)  # assigned: resumes at offset 0, as the tables say
    assert w.buffers[TP].start == 0
    w.consumer.position[TP] = 3  # a fetch already made from another position lands now
    poll(w)
    assert not w.buffers[TP].records  # 3 is not 0: fetched again from 0, nothing kept
    assert w.consumer.position[TP] == 0
    w.run(idle_exit_s=0.5)
    assert_exactly_once(out, 8)


def test_offsets_without_records_are_skipped_only_after_fetching_them_again(tmp_path, pipeline):
    """Transaction markers take offsets a consumer never sees: the gap is fetched again, and
    only when the broker answers with the same next record is it accepted, and the commit
    claims the range through it."""
    log = photo_log(tmp_path, 3)
    log.append_marker(TOPIC, 0)
    log.append_marker(TOPIC, 0)
    card = tmp_path / "card" / "cam-a"
    for index in range(3, 6):
        add_photo(log, card, index)
    out = tmp_path / "out"
    w = worker(log, out, pipeline)
    w.run(idle_exit_s=0.5)
    assert_exactly_once(out, 6)
    assert w.buffers == {} or w.buffers[TP].start == 8
    assert log.committed[(TOPIC, 0)] == 8  # the range through the markers is written


def test_a_batch_lacking_an_offset_of_its_range_is_refused_by_the_sink():
    record = lambda offset: type("R", (), {"offset": offset})()  # noqa: E731
    batch = lambda start, end, *offsets, skipped=(): Batch(  # noqa: E731
        "p0", [], [], start, end, [record(o) for o in offsets], list(skipped)
    )
    batch(0, 2, 0, 1, 2).check_gapless()
    with pytest.raises(OffsetGap, match="lacks offset 1"):
        batch(0, 2, 0, 2).check_gapless()
    with pytest.raises(OffsetGap, match="lacks offset 0"):
        batch(0, 4, 2, 3, 4).check_gapless()
    batch(0, 2, 0, 2, skipped=[(1, 1)]).check_gapless()


def test_a_retry_after_a_partial_commit_writes_exactly_the_batch_that_failed(
    tmp_path, pipeline, monkeypatch
):
    """Batch [0, 7]: observations commits, events fails. The retry was cut shorter by the
    event hold ([0, 4]): events committed 4, failures failed; the tables then stood at
    observations 7, events 4, none: every resume replayed [0, 7] and was fenced at events,
    forever. The retry now writes [0, 7] whatever the hold says."""
    log = photo_log(tmp_path, 8)
    out = tmp_path / "out"
    real_append = delta.append
    fail_once = {"events", "failures"}

    def flaky_storage(table, name, *args, **kwargs):
        if name in fail_once and (name == "events" or "events" not in fail_once):
            fail_once.discard(name)
            raise OSError(f"storage away while committing {name} (test)")
        return real_append(table, name, *args, **kwargs)

    monkeypatch.setattr(delta, "append", flaky_storage)
    w = worker(log, out, pipeline)
    poll(w)
    poll(w)
    w.checkpoint()  # [0, 7]: observations only
    monkeypatch.setattr(stream_buffer, "batch_end", lambda photos, last, *a: 4)
    w._retry_at = 0.0
    w.checkpoint()  # the retry: events, then failures fails
    monkeypatch.setattr(stream_buffer, "batch_end", lambda photos, last, *a: last)
    monkeypatch.setattr(delta, "append", real_append)

    restarted = worker(log, out, pipeline)  # as after kill -9
    for _ in range(20):  # turns of its loop, bounded: a stalled partition never gets there
        restarted._turn()
        if log.committed.get((TOPIC, 0)) == 8:
            break
    assert restarted.stats.fenced == 0 and log.committed.get((TOPIC, 0)) == 8
    assert_exactly_once(out, 8)


def test_a_partition_back_from_another_worker_knows_the_photos_it_wrote(tmp_path, pipeline):
    """The duplicate index went stale when a partition moved away and came back: a re-upload
    of a photo the other worker wrote meanwhile was written a second time."""
    log = photo_log(tmp_path, 3)
    card = tmp_path / "card" / "cam-a"
    out = tmp_path / "out"
    first = worker(log, out, pipeline)
    poll(first)
    poll(first)
    first.checkpoint()  # 0-2; cam-a's photos are in its duplicate index now
    first.consumer.revoke()
    poll(first)

    written_elsewhere = add_photo(log, card, 3)
    other = worker(log, out, pipeline)
    other.run(idle_exit_s=0.5)  # writes photo 3
    add_photo(log, card, 4, same_as=written_elsewhere)  # its re-upload

    first.consumer.assign([(TOPIC, 0)])
    poll(first)
    poll(first)
    first.checkpoint(drain=True)
    media = read_table(str(out), "media", columns=["sha256"])
    assert len(media) == 4 and len(pc.unique(media.column("sha256"))) == 4
    failures = read_table(str(out), "failures").to_pylist()
    assert [f["kind"] for f in failures] == ["duplicate"]


def test_kafka_offsets_reset_past_the_tables_are_where_the_partition_starts(tmp_path, pipeline):
    """An operator reset the group's offsets to skip a backlog: the tables held offsets 0-1,
    Kafka says 4. The partition starts at 4 (not at 2, not at 0); the skipped records are
    named on the log, and the tables' chain goes on from the floor."""
    log = photo_log(tmp_path, 7)
    out = tmp_path / "out"
    first = worker(log, out, pipeline, max_records=2)
    poll(first)
    poll(first)
    first.checkpoint()  # offsets 0-1
    log.committed[(TOPIC, 0)] = 4  # kafka-consumer-groups --reset-offsets --to-offset 4
    restarted = worker(log, out, pipeline)
    restarted.run(idle_exit_s=0.5)
    media, failed = accounted(out)
    assert len(media) + len(failed) == 2 + 3  # 0-1, then 4-6
    assert len(set(media)) == len(media)
    assert restarted.stats.fenced == 0


def test_a_new_output_starts_where_kafka_says_not_at_offset_zero(tmp_path, pipeline):
    log = photo_log(tmp_path, 5)
    log.committed[(TOPIC, 0)] = 3
    out = tmp_path / "fresh"
    w = StreamWorker(
        settings(), str(out), pipeline,
        consumer=MemoryConsumer(log, [(TOPIC, 0)]), producer=MemoryProducer(log),
    )  # fmt: skip
    w.run(idle_exit_s=0.5)
    assert len(read_table(str(out), "media")) == 2


def test_tables_ahead_of_a_recreated_topic_refuse_the_partition_and_skip_nothing(
    tmp_path, pipeline, caplog
):
    """The topic was re-created: the tables hold partition 0 up to offset 4, the new topic has
    two records. They were dropped as "already written", with no failures row, no dead letter
    and no log line, and the Kafka offset moved on. The partition is refused now, named with
    both offsets and the way out, and a new consumer group reads the new topic."""
    out = tmp_path / "out"
    worker(photo_log(tmp_path / "before", 5), out, pipeline).run(idle_exit_s=0.5)
    recreated = photo_log(tmp_path / "after", 2)
    w = worker(recreated, out, pipeline)
    with caplog.at_level("ERROR"):
        for _ in range(5):
            w._turn()
    assert "partition uploads/0 refused: the tables hold it up to offset 4" in caplog.text
    assert "new consumer group" in caplog.text
    assert TP in w.consumer.paused() and (TOPIC, 0) not in recreated.committed
    assert len(read_table(str(out), "media")) == 5 and not recreated.sent

    worker(recreated, out, pipeline, consumer_group="g-new").run(idle_exit_s=0.5)
    media, failed = accounted(out)  # the new topic's photos are copies of two old ones
    assert len(media) == 5 and len(failed) == 2 and recreated.committed[(TOPIC, 0)] == 2


def test_a_broker_that_under_reports_its_end_is_probed_not_refused(tmp_path, pipeline):
    """Tansu answers an end offset below the true one: the tables past it are checked by
    fetching the last offset they hold, which is there, and the partition goes on."""
    log = photo_log(tmp_path, 8)
    out = tmp_path / "out"
    first = worker(log, out, pipeline, max_records=5)
    poll(first)
    poll(first)
    first.checkpoint()  # offsets 0-4
    restarted = StreamWorker(
        settings(), str(out), pipeline,
        consumer=MemoryConsumer(log, [(TOPIC, 0)], reported_end=1),
        producer=MemoryProducer(log),
    )  # fmt: skip
    restarted.run(idle_exit_s=0.5)
    assert_exactly_once(out, 8)
    assert not restarted._refused


def test_kafkas_offset_behind_the_tables_is_moved_up_at_start_so_lag_reads_zero(
    tmp_path, pipeline
):
    """Killed between the tables' commit and Kafka's: the tables held every record, nothing
    was left to read, so no later commit moved Kafka's offset, and the partition's lag read 3
    for good (the chaos bench on Ceph RGW)."""
    log = photo_log(tmp_path, 5)
    out = tmp_path / "out"
    worker(log, out, pipeline).run(idle_exit_s=0.5)
    log.committed[(TOPIC, 0)] = 2  # as if killed before the last Kafka commit
    restarted = worker(log, out, pipeline)
    restarted.run(idle_exit_s=0.5)
    assert restarted.stats.records == 0 and log.committed[(TOPIC, 0)] == 5


def test_a_refused_kafka_commit_is_tried_again_until_it_lands(tmp_path, pipeline):
    """The broker refused the offset commit of the last batch; with no record left to read,
    nothing else moved the offset, and the lag never read 0."""
    log = photo_log(tmp_path, 3)
    out = tmp_path / "out"
    w = worker(log, out, pipeline)
    real_commit, refusals = w.consumer.commit, [2]

    def flaky_commit(offsets):
        if refusals[0]:
            refusals[0] -= 1
            raise KafkaError("coordinator not available (test)")
        real_commit(offsets)

    w.consumer.commit = flaky_commit
    now = [0.0]
    w.clock = lambda: now[0]
    for _ in range(6):
        w._turn()
        now[0] += 1.0
    assert refusals[0] == 0 and log.committed[(TOPIC, 0)] == 3
