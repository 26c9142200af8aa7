"""Faults in the worker's own process and disk: SIGKILL in the middle of writing a part, and a
local sink whose disk fills up. Real `trapline serve` processes against the real broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.harness import (
    account,
    accounted,
    read_rows,
    start_worker,
    stop_workers,
    wait_until,
    worker_env,
)
from support.stream_workers import make_photos

from trapline.services.tools.submit import submit_folder

# Planted in a worker before it starts: at its Nth Delta commit the process is SIGKILLed, as
# the OOM killer or a node failure would: on odd N before the commit (its Parquet files are not
# written yet), on even N just after it (the table holds the rows, the later tables and Kafka's
# offset do not). The files and the log are written by delta-rs (Rust), out of Python's reach.
KILL_MID_WRITE = """
import os, signal
from trapline.pipelines import delta
_real_append, _calls = delta.append, [0]
def _append(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] == {kill_at} and {kill_at} % 2:
        os.kill(os.getpid(), signal.SIGKILL)
    _real_append(*args, **kwargs)
    if _calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
delta.append = _append
"""


def test_sigkill_in_the_middle_of_writing_a_part_loses_and_duplicates_nothing(
    tansu, kafka_topic, tmp_path, scoreboard
):
    """Two workers die mid-checkpoint at different tables' commits; a third finishes.
    Every photo ends in exactly one row."""
    topic = kafka_topic("kill-mid-write", partitions=2)
    photos = make_photos(tmp_path / "card", 80, deployments=4, seed=11)
    assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 80
    out, log = tmp_path / "out", tmp_path / "worker.log"
    env = worker_env(  # a checkpoint every 10 records: several before all 80 are in
        tansu.bootstrap, topic, "g-kill-mid-write", batch_max_records=10, poll_max_records=10
    )
    for kill_at in (3, 6):  # before the first batch's failures commit; after a later one's events
        worker = start_worker(env, out, log, preamble=KILL_MID_WRITE.format(kill_at=kill_at))
        assert worker.wait(timeout=60) == -9, tail_of(log)
        assert tansu.alive(), f"the broker died with the worker:\n{tansu.log_tail()}"
    survivor = start_worker(env, out, log)
    try:
        wait_until(lambda: accounted(out) >= 80, 120, "all 80 photos", [survivor], log)
        time.sleep(1.0)  # a late duplicate would show up now
    finally:
        stop_workers([survivor])
    score = scoreboard.record(
        account("worker SIGKILLed mid-write (x2)", [str(p) for p in photos], out)
    )
    assert (score.duplicates, score.losses) == (0, 0)
    assert len(read_rows(out, "media")) == 80
    observations = read_rows(out, "observations")
    assert len({o["observation_id"] for o in observations}) == len(observations)


def tail_of(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


# --- disk full ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a real filesystem that really runs out of space (needs root to mount)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip(
            "mounting a small tmpfs needs root; run the reliability suite as root (CI does)"
        )
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.strip()}); a container without CAP_SYS_ADMIN"
        )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def _disk_full_run(tansu, kafka_topic, tmp_path, small_disk, group: str):
    topic = kafka_topic("disk-full", partitions=1)
    photos = make_photos(tmp_path / "card", 60, deployments=2, seed=12)
    assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 60
    out, log = small_disk / "out", tmp_path / "worker.log"
    out.mkdir()
    filler = fill(small_disk)
    env = worker_env(tansu.bootstrap, topic, group, batch_max_records=20)
    return photos, out, log, filler, env, start_worker(env, out, log)


def test_disk_full_on_the_local_sink_pauses_the_worker_until_space_is_freed(
    tansu, kafka_topic, tmp_path, small_disk, scoreboard
):
    photos, out, log, filler, env, worker = _disk_full_run(
        tansu, kafka_topic, tmp_path, small_disk, "g-disk-wait"
    )
    try:
        time.sleep(8)  # group join + the first segment's write attempts, all on a full disk
        assert worker.poll() is None, f"the worker exited on a full disk:\n{tail_of(log)[-1500:]}"
        filler.unlink()
        wait_until(
            lambda: accounted(out) >= 60, 60, "all 60 photos after space was freed", [worker], log
        )
    finally:
        stop_workers([worker])
    score = scoreboard.record(
        account("disk full, same worker waits", [str(p) for p in photos], out)
    )
    assert (score.duplicates, score.losses) == (0, 0)


def test_a_commit_that_fails_for_lack_of_space_changes_nothing_readers_see(small_disk):
    from trapline.pipelines import delta
    from trapline.pipelines.readers import read_table
    from trapline.pipelines.tables import failures_table
    from trapline.pipelines.types import Failure

    rows = failures_table(
        Failure(
            f"file:///card/IMG_{i:05d}.jpg", "dep-0", None, "decode", "corrupt", "x" * 4000 + str(i)
        )
        for i in range(2000)
    )
    out = small_disk / "out"
    out.mkdir()
    table = delta.create_table(str(out), "failures")
    filler = fill(small_disk)
    filler.write_bytes(b"\0" * (filler.stat().st_size - 64 * 1024))  # leave 64 KiB: too little
    with pytest.raises(delta.STORAGE_ERRORS):
        delta.append(table, "failures", rows, [delta.AppVersion("g:t:0", 1999)], "none")
    assert read_table(str(out), "failures").num_rows == 0
    assert delta.app_version(delta.open_table(str(out), "failures"), "g:t:0") is None
