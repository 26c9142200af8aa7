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
from harness import (
    account,
    accounted,
    read_rows,
    start_worker,
    stop_workers,
    wait_until,
    worker_env,
)
from test_stream_faults import make_photos

from trapline.services.submit import submit_folder

# Planted in a worker before it starts: at its Nth fsync (a part, claim or commit file whose
# bytes are written but not yet durable nor visible) the file is cut to half, as a torn write
# leaves it, and the process is SIGKILLed there, as the OOM killer or a node failure would.
KILL_MID_WRITE = """
import os, signal
_real_fsync, _calls = os.fsync, [0]
def _fsync(fd):
    _calls[0] += 1
    if _calls[0] == {kill_at}:
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_fsync(fd)
os.fsync = _fsync
"""


def test_sigkill_in_the_middle_of_writing_a_part_loses_and_duplicates_nothing(
    tansu, kafka_topic, tmp_path, scoreboard
):
    """Two workers die mid-write at different points of a segment's files; a third finishes.
    Every photo ends in exactly one row."""
    topic = kafka_topic("kill-mid-write", partitions=2)
    photos = make_photos(tmp_path / "card", 80, deployments=4, seed=11)
    assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 80
    out, log = tmp_path / "out", tmp_path / "worker.log"
    env = worker_env(tansu.bootstrap, topic, "g-kill-mid-write", batch_max_records=10)
    for kill_at in (3, 8):  # early in the first segment's files; later, in another segment's
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


def test_a_write_that_fails_for_lack_of_space_leaves_no_temporary_file(small_disk):
    from trapline.pipelines.sinks import ParquetSink
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
    filler = fill(small_disk)
    filler.write_bytes(b"\0" * (filler.stat().st_size - 64 * 1024))  # leave 64 KiB: too little
    sink = ParquetSink(str(out), compression="none")
    with pytest.raises(OSError):
        sink.create("failures", rows, "t-00000-00000000000000000000", {"last_offset": "1999"})
    leftovers = [p for p in out.rglob("*") if p.is_file()]
    assert not leftovers, f"left on the full disk: {leftovers}"
