"""Fixed partition ownership (`partition_assignment=ordinal`): no consumer group protocol, worker
slot i of N reads the partitions p with p % N == i. A worker killed with SIGKILL and started
again reads its own partitions at once, the others never touch them, and every photo is in
exactly one row; two workers that both believe they own a partition (N changing during a
rolling update) are fenced by the tables, not duplicated. Real `trapline serve` processes
against the real broker (Tansu).
"""

from __future__ import annotations

import signal
import time

import pytest
from support.harness import account, accounted, start_worker, stop_workers, wait_until, worker_env
from support.stream_workers import make_photos

from load_tests.restart import resume_lines
from trapline.services.run.membership import OrdinalSlot, ordinal_slot
from trapline.services.settings import Settings
from trapline.services.tools.submit import submit_folder


def test_slots_cover_every_partition_once_across_pods_and_their_workers():
    slots = [
        ordinal_slot(Settings(partition_assignment="ordinal", worker_replicas=3, workers=2), i, f"trapline-worker-{pod}")
        for pod in range(3)
        for i in range(2)
    ]  # fmt: skip
    assert [s.index for s in slots] == list(range(6)) and {s.count for s in slots} == {6}
    for partition in range(24):
        assert sum(s.owns(partition) for s in slots) == 1
    # In-process worker (workers=0) counts as one slot; an explicit ordinal beats the host name.
    settings = Settings(
        partition_assignment="ordinal", worker_replicas=4, workers=0, worker_ordinal=2
    )
    assert ordinal_slot(settings, 0, "anything") == OrdinalSlot(2, 4)
    assert ordinal_slot(Settings(), 0, "trapline-worker-1") is None  # the group assigns


@pytest.mark.parametrize(
    ("host", "replicas", "message"),
    [
        ("laptop", 2, "TRAPLINE_WORKER_ORDINAL or a host name ending in -N"),
        ("trapline-worker-2", 2, "worker ordinal 2 is not below worker_replicas=2"),
    ],
)
def test_an_unknown_or_too_large_ordinal_is_refused(host, replicas, message):
    settings = Settings(partition_assignment="ordinal", worker_replicas=replicas, workers=0)
    with pytest.raises(ValueError, match=message):
        ordinal_slot(settings, 0, host)


def test_serve_refuses_an_ordinal_beyond_the_replicas_at_start(tmp_path):
    import subprocess
    import sys

    env = worker_env(
        "127.0.0.1:1", "t", "g", partition_assignment="ordinal", worker_replicas=2, worker_ordinal=5
    )
    done = subprocess.run(
        [sys.executable, "-m", "trapline", "serve", "--workers", "0", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "worker ordinal 5 is not below worker_replicas=2" in done.stdout + done.stderr


def test_a_restarted_ordinal_worker_reads_its_partitions_at_once_exactly_once(
    tansu, kafka_topic, tmp_path, scoreboard
):
    topic = kafka_topic("ordinal-restart", partitions=4)
    first = make_photos(tmp_path / "card-1", 40, deployments=8, seed=31)
    later = make_photos(tmp_path / "card-2", 40, deployments=8, seed=32)
    out = tmp_path / "out"
    logs = [tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    envs = [
        worker_env(
            tansu.bootstrap, topic, "g-ordinal",
            partition_assignment="ordinal", worker_replicas=2, worker_ordinal=i,
            batch_max_records=10,
        )
        for i in range(2)
    ]  # fmt: skip
    workers = [start_worker(env, out, log) for env, log in zip(envs, logs)]
    try:
        assert submit_folder(str(tmp_path / "card-1"), tansu.bootstrap, topic).submitted == 40
        wait_until(lambda: accounted(out) >= 40, 180, "the first 40 photos", workers, logs[0])
        assert {p for _, p in resume_lines(logs[0])} == {0, 2}
        assert {p for _, p in resume_lines(logs[1])} == {1, 3}

        workers[0].send_signal(signal.SIGKILL)
        assert workers[0].wait(timeout=30) == -9
        killed_at = time.time()
        assert submit_folder(str(tmp_path / "card-2"), tansu.bootstrap, topic).submitted == 40
        workers[0] = start_worker(envs[0], out, logs[0])
        wait_until(lambda: accounted(out) >= 80, 180, "all 80 photos", workers, logs[0])
        back_after = time.time() - killed_at
        time.sleep(1.0)  # a late duplicate would show up now
    finally:
        stop_workers(workers)

    assert {p for _, p in resume_lines(logs[0], since=killed_at)} == {0, 2}
    assert not resume_lines(logs[1], since=killed_at), "the survivor must not take partitions"
    score = scoreboard.record(
        account(
            "worker SIGKILLed, restarted, ordinal assignment",
            [str(p) for p in first + later],
            out,
            note=f"all 80 rows {back_after:.0f} s after the kill",
        )
    )
    assert (score.duplicates, score.losses) == (0, 0)


def test_two_workers_claiming_one_partition_write_each_photo_once(
    tansu, kafka_topic, tmp_path, scoreboard
):
    """A rolling change of worker_replicas: an old pod (slot 0 of 1: every partition) and a new
    one (slot 0 of 2) read partitions 0 and 2 at the same time. The tables' transaction
    versions fence whichever commits second; it resumes from the tables."""
    topic = kafka_topic("ordinal-overlap", partitions=4)
    photos = make_photos(tmp_path / "card", 80, deployments=8, seed=33)
    out = tmp_path / "out"
    logs = [tmp_path / "old.log", tmp_path / "new.log"]
    envs = [
        worker_env(
            tansu.bootstrap, topic, "g-ordinal-overlap",
            partition_assignment="ordinal", worker_replicas=replicas, worker_ordinal=0,
            batch_max_records=5, commit_interval_s=0.5,
        )
        for replicas in (1, 2)
    ]  # fmt: skip
    workers = [start_worker(env, out, log) for env, log in zip(envs, logs)]
    try:
        assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 80
        wait_until(lambda: accounted(out) >= 80, 240, "all 80 photos", workers, logs[0])
        time.sleep(2.0)
    finally:
        stop_workers(workers)
    settled = ("fenced: table", "already holds", "commit refused")  # delta_sink.py
    fences = sum(log.read_text(errors="replace").count(m) for log in logs for m in settled)
    score = scoreboard.record(
        account(
            "two ordinal workers owning the same partitions",
            [str(p) for p in photos],
            out,
            note=f"{fences} batches fenced, skipped or refused",
        )
    )
    assert (score.duplicates, score.losses) == (0, 0)
    assert fences > 0, "both read partitions 0 and 2: the tables must have settled some batch"
