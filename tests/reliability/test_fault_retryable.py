"""Outages are waited out, never turned into failures (trapline/errors.py).

Each scenario breaks a real server for a while, in the middle of the work, and then checks the
promise: every photo exactly once in the tables, 0 failures rows, 0 dead-letter records, and
the worker said it waited. The faults are real: an HTTP proxy in front of the real Ceph RGW
gateway answering `503 SlowDown` (http_fault_proxy.py), a real Triton whose python-backend model
answers INTERNAL errors while a switch file is there, and a real Triton killed with SIGKILL while
a request is inside the model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.harness import (
    REPO,
    account,
    accounted,
    read_rows,
    start_worker,
    stop_workers,
    wait_until,
    worker_env,
)
from support.http_fault_proxy import HttpFaultProxy
from support.stream_workers import make_photos
from support.triton_repos import demo_repository

from trapline.services.adapters import kafka_io
from trapline.services.devstack.triton import start_triton
from trapline.services.tools.submit import submit_folder

pytest_plugins = ["support.s3_fixtures"]
S3_OUTAGE_S = 20.0
TRITON_OUTAGE_S = 10.0
# The clients retry on their own first (botocore 5 attempts with up to 15 s of backoff, times
# s3fs's 5): fewer of them here, so that a 20 s outage outlasts them, as a longer one does in
# production, and the worker's own waiting is what gets tested.
FEWER_CLIENT_RETRIES = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2"}

# Appended to the detector's model.py: a switch file next to the model makes it answer an
# INTERNAL error ("error") or take a while ("slow <s>", marking "executing" meanwhile).
FAULT_SWITCH = """

# --- fault switch (tests/reliability/test_fault_retryable.py) ---
import time as _time

_initialize, _execute = TritonPythonModel.initialize, TritonPythonModel.execute


def _initialize_with_switch(self, args):
    self._switch = Path(args["model_repository"]) / "fault"
    _initialize(self, args)


def _execute_with_switch(self, requests):
    mode = self._switch.read_text().split() if self._switch.exists() else []
    if mode and mode[0] == "error":
        failure = pb_utils.TritonError(f"{self.name}: injected fault")
        return [pb_utils.InferenceResponse(error=failure) for _ in requests]
    if mode and mode[0] == "slow":
        marker = self._switch.with_name("executing")
        marker.touch()
        _time.sleep(float(mode[1]))
        marker.unlink(missing_ok=True)
    return _execute(self, requests)


TritonPythonModel.initialize = _initialize_with_switch
TritonPythonModel.execute = _execute_with_switch
"""


def _no_dead_letters(tansu, topic: str) -> list:
    return kafka_io.read_topic(tansu.bootstrap, f"{topic}.dlq", 1, timeout_s=3)


# -- storage ----------------------------------------------------------------------------------


@pytest.fixture
def photos_in_bucket(ceph_rgw, s3, s3_bucket, tmp_path):
    """60 small photos in a fresh bucket of the real gateway, and a 503 proxy in front of it."""
    bucket = s3_bucket("photos")
    make_photos(tmp_path / "card", 60, deployments=3, seed=17)
    s3.put(str(tmp_path / "card"), f"{bucket}/card", recursive=True)
    uris = sorted(f"s3://{key}" for key in s3.find(f"{bucket}/card"))
    assert len(uris) == 60
    proxy = HttpFaultProxy(ceph_rgw.endpoint_url).start()
    yield f"s3://{bucket}/card", uris, proxy
    proxy.stop()


def _through(proxy: HttpFaultProxy, ceph_rgw) -> dict[str, str]:
    return dict(
        s3_endpoint_url=proxy.url, s3_region=ceph_rgw.region,
        s3_access_key_id=ceph_rgw.access_key, s3_secret_access_key=ceph_rgw.secret_key,
    )  # fmt: skip


def test_s3_answering_503_for_20_s_stream_waits_every_photo_once_no_failures(
    tansu, kafka_topic, ceph_rgw, photos_in_bucket, tmp_path, scoreboard
):
    source, uris, proxy = photos_in_bucket
    topic = kafka_topic("s3-503", partitions=2)
    assert submit_folder(source, tansu.bootstrap, topic).submitted == 60
    out, log = tmp_path / "out", tmp_path / "worker.log"
    env = worker_env(
        tansu.bootstrap, topic, "g-s3-503", batch_max_records=10, **_through(proxy, ceph_rgw)
    )
    env.update(FEWER_CLIENT_RETRIES)
    proxy.trip_after(photo_reads=15, outage_s=S3_OUTAGE_S)
    started = time.monotonic()
    worker = start_worker(env, out, log)
    try:
        wait_until(lambda: proxy.faults > 0, 60, "the 503 outage to start", [worker], log)
        wait_until(lambda: accounted(out) >= 60, 120, "all photos after S3 healed", [worker], log)
        took = time.monotonic() - started
    finally:
        stop_workers([worker])
    failures = read_rows(out, "failures")
    score = scoreboard.record(
        account(
            "S3 answering 503 SlowDown 20 s (photo reads)", uris, out,
            note=f"{proxy.faults} requests answered 503; all rows after {took:.0f} s",
        )
    )  # fmt: skip
    assert (score.duplicates, score.losses, score.rows) == (0, 0, 60)
    assert not failures, f"{len(failures)} photos failed: {failures[0]['message'][:300]}"
    assert _no_dead_letters(tansu, topic) == []
    assert "storage unavailable" in log.read_text(errors="replace")  # it saw the outage


def test_s3_answering_503_folder_run_waits_and_retries_the_batch_no_failures(
    ceph_rgw, photos_in_bucket, tmp_path, scoreboard
):
    source, uris, proxy = photos_in_bucket
    out = tmp_path / "out"
    env = dict(
        os.environ, PYTHONUNBUFFERED="1", TRAPLINE_BATCH_SIZE="8", **FEWER_CLIENT_RETRIES,
        **{f"TRAPLINE_{k.upper()}": v for k, v in _through(proxy, ceph_rgw).items()},
    )  # fmt: skip
    proxy.trip_after(photo_reads=12, outage_s=8.0)
    run = subprocess.run(
        [sys.executable, "-m", "trapline", "run", source, "--out", str(out), "--workers", "0"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    score = scoreboard.record(
        account(
            "S3 503 8 s during a folder run", uris, out,
            note=f"{proxy.faults} requests answered 503",
        )
    )  # fmt: skip
    assert proxy.faults > 0
    assert (score.duplicates, score.losses, score.rows) == (0, 0, 60)
    assert read_rows(out, "failures") == []
    assert "storage unavailable" in output and "retrying batch" in output, output[-3000:]


# -- Triton -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def switched_repository(tmp_path_factory):
    """The demo models as a python-backend repository, the detector with a fault switch."""
    repo = demo_repository(tmp_path_factory.mktemp("triton-switched"))
    model = repo / "trapline_detector" / "1" / "model.py"
    model.write_text(model.read_text() + FAULT_SWITCH)
    return repo


def _triton_worker(tansu, topic: str, group: str, triton) -> dict[str, str]:
    return worker_env(
        tansu.bootstrap, topic, group, batch_max_records=10, poll_max_records=10,
        model_backend="triton", triton_url=triton.grpc_url, triton_retries=1, triton_timeout_s=5,
    )  # fmt: skip


def test_triton_answering_internal_errors_10_s_every_photo_once_no_failures(
    tansu, kafka_topic, switched_repository, tmp_path, scoreboard
):
    switch = switched_repository / "trapline_detector" / "fault"
    switch.unlink(missing_ok=True)
    topic = kafka_topic("triton-internal", partitions=2)
    first = make_photos(tmp_path / "first", 20, deployments=2, seed=23)
    rest = make_photos(tmp_path / "rest", 60, deployments=3, seed=24)
    out, log = tmp_path / "out", tmp_path / "worker.log"
    triton = start_triton(switched_repository)
    worker = start_worker(_triton_worker(tansu, topic, "g-triton-internal", triton), out, log)
    try:
        assert submit_folder(str(tmp_path / "first"), tansu.bootstrap, topic).submitted == 20
        wait_until(lambda: accounted(out) >= 20, 90, "the first photos", [worker], log)
        switch.write_text("error")  # the rest arrive while the model answers INTERNAL
        assert submit_folder(str(tmp_path / "rest"), tansu.bootstrap, topic).submitted == 60
        time.sleep(TRITON_OUTAGE_S)
        during = accounted(out) - 20
        switch.unlink()
        wait_until(
            lambda: accounted(out) >= 80, 90, "all photos after Triton healed", [worker], log
        )
    finally:
        stop_workers([worker])
        triton.stop()
        switch.unlink(missing_ok=True)
    failures = read_rows(out, "failures")
    score = scoreboard.record(
        account(
            "Triton INTERNAL errors 10 s", [str(p) for p in first + rest], out,
            note=f"{during} rows written while failing",
        )
    )  # fmt: skip
    assert (score.duplicates, score.losses, score.rows) == (0, 0, 80)
    assert during == 0  # nothing got past a failing model
    assert not failures, f"{len(failures)} photos failed: {failures[0]['message'][:300]}"
    assert _no_dead_letters(tansu, topic) == []
    assert "model backend unavailable" in log.read_text(errors="replace")


def test_triton_killed_during_a_request_every_photo_once_no_failures(
    tansu, kafka_topic, switched_repository, tmp_path, scoreboard
):
    switch = switched_repository / "trapline_detector" / "fault"
    executing = switch.with_name("executing")
    switch.write_text("slow 1.0")  # each detector call takes 1 s: one is always inside
    executing.unlink(missing_ok=True)
    topic = kafka_topic("triton-kill9", partitions=2)
    photos = make_photos(tmp_path / "card", 60, deployments=3, seed=29)
    assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 60
    out, log = tmp_path / "out", tmp_path / "worker.log"
    triton = start_triton(switched_repository)
    ports = dict(
        http_port=triton.http_port, grpc_port=triton.grpc_port, metrics_port=triton.metrics_port
    )
    worker = start_worker(_triton_worker(tansu, topic, "g-triton-kill9", triton), out, log)
    try:
        wait_until(lambda: accounted(out) >= 10, 90, "the first photos", [worker], log)
        wait_until(lambda: executing.exists(), 30, "a request inside the model", [worker], log)
        os.kill(triton.process.pid, signal.SIGKILL)  # mid-request: no drain, no goodbye
        triton.process.wait()
        _kill_stubs(switched_repository)
        executing.unlink(missing_ok=True)
        time.sleep(3.0)
        assert worker.poll() is None, "the worker must outlive a killed model server"
        switch.unlink()
        triton = start_triton(switched_repository, **ports)
        wait_until(lambda: accounted(out) >= 60, 90, "all photos after the restart", [worker], log)
    finally:
        stop_workers([worker])
        triton.stop()
        switch.unlink(missing_ok=True)
    failures = read_rows(out, "failures")
    score = scoreboard.record(
        account("Triton kill -9 mid-request", [str(p) for p in photos], out, note="restarted")
    )
    assert (score.duplicates, score.losses, score.rows) == (0, 0, 60)
    assert not failures, f"{len(failures)} photos failed: {failures[0]['message'][:300]}"
    assert _no_dead_letters(tansu, topic) == []
    assert "model backend unavailable" in log.read_text(errors="replace")


def _kill_stubs(repository: Path) -> None:
    """The python backend's stub processes of a SIGKILLed server notice its death only later:
    end ours (found by the repository path on their command line) so they hold nothing."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "triton_python_backend_stub" in command and str(repository) in command:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
