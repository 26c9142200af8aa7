"""A running `trapline run` and `trapline serve` (real processes, a real local Ray) listen on
loopback only, print their workers' log lines on stdout, and leave no helper behind a kill -9.

Sockets are read from /proc (tests/support/proc_sockets.py) for the process and every descendant:
Ray's GCS, raylet, agents, monitor, dashboard process and the actors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.proc_sockets import command, descendants, is_loopback, listening
from support.stream_workers import make_photos, worker_env

from trapline.pipelines.readers import read_table
from trapline.services.tools.submit import submit_folder

pytestmark = pytest.mark.slow
TRAPLINE = [sys.executable, "-m", "trapline"]


def _non_loopback(sockets: dict[int, list[tuple[str, int]]]) -> list[str]:
    return [
        f"{pid} {command(pid)}: {address}:{port}"
        for pid, found in sockets.items()
        for address, port in found
        if not is_loopback(address)
    ]


def test_a_folder_run_with_a_worker_listens_on_loopback_only(tmp_path):
    make_photos(tmp_path / "card", 60, deployments=2)
    run = subprocess.Popen(
        [*TRAPLINE, "run", str(tmp_path / "card"), "--out", str(tmp_path / "out"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    seen: dict[int, list[tuple[str, int]]] = {}
    while run.poll() is None:  # sample until it ends: Ray's processes come and go
        seen.update(listening([run.pid, *descendants(run.pid)]))
        time.sleep(0.3)
    assert run.returncode == 0, run.stderr.read().decode()[-2000:]
    assert len(seen) >= 3, f"Ray's processes were not seen listening: {seen}"
    assert _non_loopback(seen) == []


def test_serve_listens_on_loopback_logs_workers_on_stdout_and_leaves_no_helper(
    tansu, kafka_topic, tmp_path
):
    topic = kafka_topic("loopback", partitions=2)
    make_photos(tmp_path / "card", 6, deployments=2)
    env = worker_env(tansu.bootstrap, topic, "g-loopback")
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout.open("wb") as out_handle, stderr.open("wb") as err_handle:
        serve = subprocess.Popen(
            [*TRAPLINE, "serve", "--workers", "1", "--out", str(tmp_path / "out")],
            env=env, stdout=out_handle, stderr=err_handle, cwd=tmp_path,
        )  # fmt: skip
    try:
        assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 6
        deadline = time.monotonic() + 120
        while _media_rows(tmp_path / "out") < 6:
            assert serve.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, stderr.read_text()[-3000:]
            time.sleep(0.5)
        helpers = descendants(serve.pid)
        sockets = listening([serve.pid, *helpers])
        assert len(sockets) >= 3, f"Ray's processes were not seen listening: {sockets}"
        assert _non_loopback(sockets) == []

        lines = [json.loads(line) for line in stdout.read_text().splitlines() if line.strip()]
        resumed = [line for line in lines if "resumes at offset" in line["message"]]
        assert {line["partition"] for line in resumed} == {0, 1}
        assert all(line["worker"] == 0 and line["topic"] == topic for line in resumed)
        assert all("offset" in line for line in resumed)
        table_line = [line["message"] for line in lines if line["message"].startswith("tables: ")]
        assert table_line == [f"tables: {tmp_path / 'out'} (a local folder)"]
        assert "AWS S3" not in stdout.read_text() + stderr.read_text()

        os.kill(serve.pid, signal.SIGKILL)
        serve.wait()
        killed_at = time.monotonic()
        while _running(helpers) and time.monotonic() - killed_at < 10:
            time.sleep(0.2)
        gone_after_s = time.monotonic() - killed_at
        left = [f"{pid} {command(pid)}" for pid in _running(helpers)]
        assert left == [] and gone_after_s < 6, f"after {gone_after_s:.1f} s: {left}"
    finally:
        if serve.poll() is None:
            serve.kill()
        for pid in _running(helpers if "helpers" in locals() else []):
            os.kill(pid, signal.SIGKILL)


def test_serve_refuses_an_empty_storage_roots_list_at_start(tmp_path):
    env = dict(os.environ, TRAPLINE_STORAGE_ROOTS="[]", TRAPLINE_METRICS_PORT="0")
    started = subprocess.run(
        [*TRAPLINE, "serve", "--workers", "0", "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert started.returncode == 2
    message = " ".join((started.stdout + started.stderr).split())
    assert "storage_roots is an empty list" in message and '["*"]' in message


def _media_rows(out: Path) -> int:
    try:
        return read_table(str(out), "media").num_rows
    except Exception:  # not written yet
        return 0


def _running(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive
