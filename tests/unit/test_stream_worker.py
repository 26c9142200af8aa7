"""The stream worker driven from an in-memory source (tests/support/memory_kafka.py): zombies, races and
replays staged exactly, against real Delta tables on disk. The same worker runs against the real
broker in tests/integration/test_stream.py and tests/reliability/."""

from __future__ import annotations

import logging
import shutil

import pytest
from kafka import TopicPartition
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

from trapline.errors import BackendUnavailable
from trapline.pipelines import delta, delta_txn
from trapline.pipelines.deployments import cached_deployments
from trapline.pipelines.readers import read_table
from trapline.pipelines.tables import TABLES
from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.run.stream import StreamWorker
from trapline.services.run.stream_buffer import held_records_limit


def test_a_zombie_whose_partition_moved_on_is_fenced_and_drops_its_batch(
    uploads, tmp_path, pipeline, caplog
):
    submitted = len(uploads.partitions[(TOPIC, 0)])
    out = tmp_path / "out"
    zombie = worker(uploads, out, pipeline)
    poll(zombie)
    poll(zombie)  # the zombie holds every record, processed at its checkpoint
    owner = worker(uploads, out, pipeline, max_records=5)
    poll(owner)
    poll(owner)
    owner.checkpoint()  # the new owner commits offsets 0-4 first
    assert len(read_table(str(out), "media")) + len(read_table(str(out), "failures")) == 5

    with caplog.at_level(logging.WARNING):
        zombie.checkpoint()  # its batch is [0, last]: the tables say 4, so someone else owns it
    assert zombie.stats.fenced == 1 and "fenced" in caplog.text
    assert accounted(out)[0] == read_table(str(out), "media").column("media_id").to_pylist()

    owner.run(idle_exit_s=0.5)
    assert_exactly_once(out, submitted)


def test_a_stale_reading_of_the_log_at_resume_costs_a_fence_never_a_duplicate(
    uploads, tmp_path, pipeline, monkeypatch, caplog
):
    """Resuming reads the versions straight from the log (pipelines/delta_txn.py), which is
    advice: if it lags (here: it shows the first commit only), the replayed batch is fenced
    by the commit's own snapshot, and the partition resumes from delta-rs's exact reading."""
    submitted = len(uploads.partitions[(TOPIC, 0)])
    out = tmp_path / "out"
    first = worker(uploads, out, pipeline, max_records=2)
    poll(first)
    poll(first)
    first.checkpoint()  # offsets 0-1
    stale = {name: delta_txn.read_app_versions(delta.table_uri(str(out), name)) for name in TABLES}
    poll(first)
    first.checkpoint()  # offsets 2-3
    assert stale["media"] == {"trapline:g:uploads:0": 1}
    assert delta_txn.read_app_versions(delta.table_uri(str(out), "media")) == {
        "trapline:g:uploads:0": 3
    }

    real_read = delta_txn.read_app_versions
    reads = []

    def lagging(uri):
        reads.append(uri)
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        return stale[name] if len(reads) <= len(TABLES) else real_read(uri)

    monkeypatch.setattr(delta_txn, "read_app_versions", lagging)
    uploads.committed.clear()  # Kafka's commit lost too: else it shows the tables' real point
    restarted = worker(uploads, out, pipeline)
    with caplog.at_level(logging.WARNING):
        restarted.run(idle_exit_s=3)  # the fenced batch is read again after the fence
    assert restarted.stats.fenced == 1 and "fenced" in caplog.text
    assert_exactly_once(out, submitted)


def test_a_commit_racing_the_new_owners_is_refused_and_decided_again(
    uploads, tmp_path, pipeline, monkeypatch, caplog
):
    """The zombie reads the tables' versions, then the owner commits before the zombie's own
    commit lands: delta-rs refuses the zombie's commit (same app id), and on the new snapshot
    the zombie sees the range is held."""
    submitted = len(uploads.partitions[(TOPIC, 0)])
    out = tmp_path / "out"
    zombie = worker(uploads, out, pipeline)
    owner = worker(uploads, out, pipeline)
    poll(zombie)
    poll(zombie)
    real_append = delta.append
    raced = []

    def owner_commits_first(table, name, *args, **kwargs):
        if not raced and name == "observations":
            raced.append(True)
            owner.run(idle_exit_s=0.5)  # the owner writes everything meanwhile
        return real_append(table, name, *args, **kwargs)

    monkeypatch.setattr(delta, "append", owner_commits_first)
    with caplog.at_level(logging.WARNING):
        zombie.checkpoint()
    assert raced and "commit refused" in caplog.text
    assert_exactly_once(out, submitted)


def test_a_replay_after_the_deployments_registry_changed_writes_nothing_twice(
    uploads, tmp_path, pipeline, monkeypatch
):
    """Killed after observations were committed; the camera's UTC offset is corrected before
    the restart, so the replay puts the photos on other dates: each table still holds each
    photo once (observations keep the first attempt's rows, the others get the replay's)."""
    submitted = len(uploads.partitions[(TOPIC, 0)])
    out = tmp_path / "out"
    registry = tmp_path / "deployments.csv"
    registry.write_text("deployment_id,utc_offset\ncam-b,+14:00\n")
    real_append = delta.append

    def killed_after_observations(table, name, *args, **kwargs):
        if name == "events":
            raise SystemExit("killed between two tables' commits")
        return real_append(table, name, *args, **kwargs)

    monkeypatch.setattr(delta, "append", killed_after_observations)
    with pytest.raises(SystemExit):
        worker(uploads, out, pipeline, deployments_file=str(registry)).run(idle_exit_s=0.5)
    monkeypatch.undo()
    first_dates = set(read_table(str(out), "observations").column("date").to_pylist())

    registry.write_text("deployment_id,utc_offset\ncam-b,-11:00\n")
    cached_deployments.cache_clear()  # what the restart's new process does
    worker(uploads, out, pipeline, deployments_file=str(registry)).run(idle_exit_s=0.5)
    assert_exactly_once(out, submitted)
    media_dates = set(read_table(str(out), "media").column("date").to_pylist())
    assert media_dates != first_dates  # the replay did place the photos elsewhere


def test_dead_letters_are_sent_once_per_failures_row_and_not_again_on_replay(
    uploads, tmp_path, pipeline
):
    out = tmp_path / "out"
    uploads.append(TOPIC, 0, b"{not json", key=b"cam-b")
    worker(uploads, out, pipeline).run(idle_exit_s=0.5)
    sent = [s for s in uploads.sent if s[0] == f"{TOPIC}.dlq"]
    failures = read_table(str(out), "failures").to_pylist()
    assert len(sent) == len(failures) == 2  # the corrupt photo and the malformed event
    uploads.committed.clear()  # Kafka forgot: the tables still know where the partition is
    again = worker(uploads, out, pipeline)
    again.run(idle_exit_s=0.5)
    assert again.stats.records == 0 and len(uploads.sent) == len(sent)


def test_the_stages_run_once_a_model_batch_waits_not_when_the_commit_is_due(
    uploads, tmp_path, pipeline
):
    """A worker that processed only at its checkpoints idled while a commit filled: 1,000
    photos at the shipped 5 s commit interval went through at 70 photos/s against 130."""
    now = [0.0]
    written = lambda out: sum(len(read_table(str(out), t)) for t in ("media", "failures"))  # noqa: E731
    submitted = len(uploads.partitions[(TOPIC, 0)])
    out = tmp_path / "out"
    w = StreamWorker(
        settings(commit_interval_s=3600, batch_size=4, batch_max_wait_s=2),
        str(out), pipeline, clock=lambda: now[0],
        consumer=MemoryConsumer(uploads, [(TOPIC, 0)], max_records=3),
        producer=MemoryProducer(uploads),
    )  # fmt: skip
    buffer = lambda: next(iter(w.buffers.values()))  # noqa: E731
    poll(w)  # the assignment
    poll(w)
    assert not w._stages_due()  # 3 records: less than a batch, and none waited 2 s
    now[0] = 2.0
    assert w._stages_due() and not w._due()  # the oldest waited: run them, commit not due
    w._run_stages()
    assert len(buffer().done) == 3 and written(out) == 0
    poll(w)
    poll(w)  # 6 more: a batch
    assert w._stages_due()
    w._run_stages()  # at most a batch a partition, then back to the loop
    assert len(buffer().done) == 3 + 4 and written(out) == 0
    for _ in range(3):  # the rest, and the commit at the drain (the loop's end)
        poll(w)
    w.checkpoint(drain=True)
    assert_exactly_once(out, submitted)


class ModelsAway:
    """The pipeline while the model server is down: every batch is an outage."""

    def __init__(self, pipeline):
        self.model_names = pipeline.model_names
        self.classifier = pipeline.classifier

    def process(self, batch):
        raise BackendUnavailable("model server unreachable (test)")


def test_an_outage_leaves_the_backlog_in_the_broker_not_in_the_worker(tmp_path, pipeline):
    """The loop kept polling while every checkpoint waited out an outage: each turn read
    `poll_max_records` more into memory, so a long outage held the partition's whole backlog.
    A partition at `held_records_limit` fetches nothing more; once the models are back, the
    worker fetches again and every record is written exactly once."""
    card = tmp_path / "card"
    card.mkdir()
    log = MemoryLog()
    sent = 60
    for index in range(sent):  # the sample's photos again and again, each its own upload
        photo = sorted((SAMPLE / "deployment-a").glob("*.jpg"))[index % 5]
        path = card / f"{index:03d}-{photo.name}"
        shutil.copy(photo, path)
        path.write_bytes(path.read_bytes() + index.to_bytes(4, "big"))  # distinct sha256
        log.append(TOPIC, 0, encode_upload(Upload(uri=path.as_uri(), deployment_id="cam-a")))
    now = [0.0]
    w = StreamWorker(
        settings(batch_max_records=3, batch_size=2),
        str(tmp_path / "out"), ModelsAway(pipeline), clock=lambda: now[0],
        consumer=MemoryConsumer(log, [(TOPIC, 0)], max_records=2),
        producer=MemoryProducer(log),
    )  # fmt: skip
    tp = TopicPartition(TOPIC, 0)
    for _ in range(100):  # an outage: every checkpoint put back, retried with backoff
        w._turn()
        now[0] += 1.0
    limit = held_records_limit(w.settings)
    assert w._outage is not None and w._outage[1] >= 3, "the outage was not met"
    assert limit <= len(w.buffers[tp].records) <= limit + 2  # one poll may overshoot
    assert w.consumer.position[tp] == len(w.buffers[tp].records)  # the rest is in the broker
    assert tp in w.consumer.paused()
    w.pipeline = pipeline  # the models are back
    for _ in range(400):
        w._turn()
        now[0] += 1.0
        if w.consumer.committed(tp) == sent:
            break
    assert w.consumer.committed(tp) == sent and not w.consumer.paused()
    assert_exactly_once(tmp_path / "out", sent)
