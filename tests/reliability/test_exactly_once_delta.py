"""Exactly once as readers see it, black box: real `trapline serve` processes, the real broker,
Delta tables on a local disk and on the real Ceph S3 gateway.

- Two workers (restarted as Kubernetes would) get kill -9 at random moments while another
  process reads the tables every 0.3 s through the Delta log and `trapline compact` runs:
  no media_id is ever visible twice, and in the end every submitted file is in media or
  failures exactly once.
- A real zombie: the owner of the partitions freezes (SIGSTOP) in the middle of a checkpoint, a
  new worker takes the partitions over and commits, then the old one continues (SIGCONT): its
  late commit is refused by delta-rs (same app ids), logged, and nothing is written twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.delta_commits import commit_photos
from support.harness import (
    Supervisor,
    account,
    accounted,
    start_worker,
    stop_workers,
    tail,
    wait_until,
    worker_env,
)
from support.stream_workers import make_photos

from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.adapters import kafka_io
from trapline.services.tools.submit import submit_folder

pytest_plugins = ["support.s3_fixtures"]

# A separate process that reads media and failures through the log as fast as it can and
# records, per read, the rows seen and any media_id or uri seen twice. It stops at the file
# `stop` and writes its findings as JSON.
READER = """
import json, sys, time, os
from collections import Counter
from trapline.pipelines.readers import read_table
from trapline.services.adapters.object_store import configure_fsspec
from trapline.services.settings import Settings
configure_fsspec(Settings())
out, stop, report = sys.argv[1:4]
reads, twice, most = 0, [], 0
while not os.path.exists(stop):
    try:
        media = read_table(out, "media", columns=["media_id", "uri"])
        failures = read_table(out, "failures", columns=["uri"])
    except Exception as error:  # a table being created: try again
        time.sleep(0.3)
        continue
    reads += 1
    ids = Counter(media.column("media_id").to_pylist())
    uris = Counter(media.column("uri").to_pylist() + failures.column("uri").to_pylist())
    twice += [k for k, n in ids.items() if n > 1] + [k for k, n in uris.items() if n > 1]
    most = max(most, media.num_rows + failures.num_rows)
    time.sleep(0.3)
json.dump({"reads": reads, "twice": sorted(set(twice)), "most": most}, open(report, "w"))
"""


def start_reader(out: str, tmp_path: Path, env: dict) -> tuple[subprocess.Popen, Path, Path]:
    stop, report = tmp_path / "reader.stop", tmp_path / "reader.json"
    process = subprocess.Popen(
        [sys.executable, "-c", READER, out, str(stop), str(report)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    return process, stop, report


def finish_reader(process: subprocess.Popen, stop: Path, report: Path) -> dict:
    stop.touch()
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors.decode()[-2000:]
    return json.loads(report.read_text())


def submit_with_bad_inputs(tansu, topic: str, card: Path, photos: int) -> list[str]:
    """`photos` photos (8 of them corrupt), 6 malformed events and 4 of missing files; returns
    what must end in media or failures (uris, and topic/partition/offset for bad events)."""
    paths = make_photos(card, photos, deployments=6, seed=7)
    for path in paths[:8]:
        path.write_bytes(path.read_bytes()[:150])
    assert submit_folder(str(card), tansu.bootstrap, topic).submitted == photos
    missing = [card / f"gone-{i}.jpg" for i in range(4)]
    producer = kafka_io.make_producer(tansu.bootstrap)
    futures = [
        producer.send(topic, key=b"dep-0", value=encode_upload(
            Upload(uri=p.as_uri(), deployment_id="dep-0")))
        for p in missing
    ]  # fmt: skip
    futures += [producer.send(topic, key=b"dep-1", value=b"{broken %d" % i) for i in range(6)]
    kafka_io.wait_delivered(futures)
    producer.close()
    return [str(p) for p in paths + missing]


def s3_env(ceph_rgw) -> dict[str, str]:
    return {
        "TRAPLINE_S3_ENDPOINT_URL": ceph_rgw.endpoint_url,
        "TRAPLINE_S3_REGION": ceph_rgw.region,
        "TRAPLINE_S3_ACCESS_KEY_ID": ceph_rgw.access_key,
        "TRAPLINE_S3_SECRET_ACCESS_KEY": ceph_rgw.secret_key,
    }


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_random_kill_9_of_two_workers_while_a_reader_polls_never_shows_a_row_twice(
    storage, tansu, kafka_topic, tmp_path, scoreboard, request
):
    if storage == "s3":
        ceph_rgw, s3_bucket = (
            request.getfixturevalue("ceph_rgw"),
            request.getfixturevalue("s3_bucket"),
        )
        out, extra = f"s3://{s3_bucket('results')}/out", s3_env(ceph_rgw)
    else:
        out, extra = str(tmp_path / "out"), {}
    topic = kafka_topic("kill-delta", partitions=4)
    expected = submit_with_bad_inputs(tansu, topic, tmp_path / "card", 320)
    env = {**worker_env(tansu.bootstrap, topic, f"g-kill-{storage}", batch_max_records=20,
                        commit_interval_s=0.3), **extra}  # fmt: skip
    log = tmp_path / "workers.log"
    reader = start_reader(out, tmp_path, env)
    workers = [Supervisor(lambda: start_worker(env, out, log)) for _ in range(2)]
    chance = random.Random(16)
    kills = while_working = 0
    try:
        workers[0].wait_until(lambda: accounted(out) >= 20, 120, "the first rows", log)
        while kills < 6:  # six kills whatever the pace (a fast machine may finish early)
            victim = chance.choice(workers)
            victim.sleep(chance.uniform(0.5, 2.0))  # the victim is restarted first if it died
            if victim.worker.poll() is None:
                while_working += accounted(out) < len(expected) + 6
                victim.worker.send_signal(signal.SIGKILL)
                victim.worker.wait()
                kills += 1
            if storage == "local" and kills % 2:  # compaction, while workers write and die
                compact = subprocess.run(
                    [sys.executable, "-m", "trapline", "compact", out], env=env,
                    capture_output=True, timeout=120,
                )  # fmt: skip
                assert compact.returncode == 0, compact.stdout.decode() + compact.stderr.decode()
        for supervisor in workers:
            supervisor.wait_until(
                lambda: accounted(out) >= len(expected) + 6, 240, "every input", log
            )
        time.sleep(2.0)  # a late duplicate would show up now
    finally:
        for supervisor in workers:
            supervisor.stop()
        seen = finish_reader(*reader)
    assert kills >= 5, tail(log)
    score = scoreboard.record(account(
        f"kill -9 x{kills}, 2 workers, {storage}", expected, out,
        note=f"{while_working} kills while inputs were left",
    ))  # fmt: skip
    assert (score.duplicates, score.losses) == (0, 0), tail(log)
    assert seen["reads"] > 10 and seen["twice"] == [], seen
    bad_events = [r for r in _failures(out) if r["stage"] == "event"]
    assert len(bad_events) == 6  # the malformed events, once each


def _failures(out: str) -> list[dict]:
    from trapline.pipelines.readers import read_table

    return read_table(out, "failures").to_pylist()


# Planted in the old owner: at its second checkpoint's first commit (its batch processed, the
# tables' versions read, the commit not sent) the process freezes itself, as a long GC pause, a
# stalled VM or a SIGSTOP would. The test wakes it (SIGCONT) after the takeover.
FREEZE_MID_CHECKPOINT = """
import os, signal
from trapline.pipelines import delta
_real_append, _calls = delta.append, [0]
def _append(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] == 5:
        os.kill(os.getpid(), signal.SIGSTOP)
    return _real_append(*args, **kwargs)
delta.append = _append
"""


def _stopped(process: subprocess.Popen) -> bool:
    with open(f"/proc/{process.pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_frozen_owner_that_wakes_after_its_partitions_moved_is_fenced(
    tansu, kafka_topic, tmp_path, scoreboard
):
    topic = kafka_topic("zombie", partitions=2)
    paths = make_photos(tmp_path / "card", 240, deployments=4, seed=8)
    assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 240
    out, log_a, log_b = tmp_path / "out", tmp_path / "a.log", tmp_path / "b.log"
    env = worker_env(tansu.bootstrap, topic, "g-zombie", batch_max_records=40,
                     poll_max_records=40, commit_interval_s=0.5)  # fmt: skip
    old = start_worker(env, out, log_a, preamble=FREEZE_MID_CHECKPOINT)
    new = None
    try:
        wait_until(
            lambda: _stopped(old), 120, "the old owner to freeze mid-checkpoint", [old], log_a
        )
        frozen_at = accounted(out)
        assert 0 < frozen_at < 240
        new = start_worker(env, out, log_b)
        # The group drops the frozen member after its session timeout; the new one takes over
        # from the tables' versions and writes everything, the frozen batch's range included.
        wait_until(lambda: accounted(out) >= 240, 180, "every photo", [new], log_b)
        old.send_signal(signal.SIGCONT)  # the zombie wakes up and sends its stale commit
        time.sleep(4.0)
    finally:
        if old.poll() is None:
            old.send_signal(signal.SIGCONT)
        stop_workers([w for w in (old, new) if w is not None])
    score = scoreboard.record(
        account("zombie frozen mid-checkpoint, woken after takeover", [str(p) for p in paths], out)
    )
    assert (score.duplicates, score.losses) == (0, 0)
    zombie_log = log_a.read_text(errors="replace")
    assert "commit refused" in zombie_log, zombie_log[-3000:]


def test_the_reader_script_is_a_real_reader(tmp_path):
    """The polling reader above reports duplicates it sees (checked on a table made to hold
    one media_id twice), so its silence in the scenarios means something."""
    out = tmp_path / "out"
    commit_photos(str(out), 0, 3, app_id="a")
    commit_photos(str(out), 2, 3, app_id="b")  # m00002 twice: two writers without a fence
    process, stop, report = start_reader(str(out), tmp_path, dict(os.environ))
    time.sleep(3)
    seen = finish_reader(process, stop, report)
    assert "m00002" in seen["twice"] and seen["most"] == 6
