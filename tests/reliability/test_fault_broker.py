"""The broker gone for 30 s in the middle of a run, then back at the same address.

How "restarted" is made honest here: Tansu with `memory://` storage forgets its topics, offsets
and groups on restart, which no real Kafka does; its durable `s3://` engine does not work
against the Ceph RGW 16.2 of this machine (a produce never completes: Tansu's object store
loops on a conditional `If-Match` PUT of each partition's watermark.json, which RGW 16.2 does
not honour). So the broker keeps running, with its data, behind a TCP forwarder on the address
it advertises, and the forwarder is what stops and restarts: the worker sees what a broker
restart shows a client (open connections reset, connections refused for 30 s, its group
session expired, then the same broker and data at the same address).
The worker is not touched: it has to ride the outage out on its own.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support.harness import Supervisor, account, accounted, start_worker, worker_env
from support.stream_workers import make_photos
from support.tcp_proxy import TcpProxy

from trapline.services.adapters import kafka_io
from trapline.services.devstack.tansu import free_port, stop_process, tansu_binary
from trapline.services.tools.submit import submit_folder

OUTAGE_S = 30.0


@pytest.fixture
def proxied_broker():
    """A Tansu that advertises the forwarder's port, so every client connection goes through it."""
    proxy = TcpProxy(free_port()).start()
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="trapline-tansu-proxied-")) / "tansu.log"
    command = [
        str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}", "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    with log.open("wb") as handle:
        broker = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    proxy.target_port = port
    try:
        bootstrap = f"127.0.0.1:{proxy.port}"
        deadline = time.monotonic() + 15
        while "ready in" not in log.read_text(errors="replace"):
            assert broker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        kafka_io.list_topics(bootstrap, timeout_s=10)
        yield proxy, bootstrap
    finally:
        proxy.stop()
        stop_process(broker, 5)


def test_broker_gone_30_s_then_back_every_photo_exactly_once(proxied_broker, tmp_path, scoreboard):
    proxy, bootstrap = proxied_broker
    topic = "reliability.broker-outage"
    kafka_io.ensure_topics(bootstrap, [topic], 2)
    photos = make_photos(tmp_path / "card", 150, deployments=4, seed=41)
    assert submit_folder(str(tmp_path / "card"), bootstrap, topic).submitted == 150
    out, log = tmp_path / "out", tmp_path / "worker.log"
    env = worker_env(bootstrap, topic, "g-broker-outage", batch_max_records=10)
    supervisor = Supervisor(lambda: start_worker(env, out, log))
    try:
        supervisor.wait_until(lambda: accounted(out) >= 20, 90, "the first segments", log)
        proxy.stop()
        stopped_at, before = time.monotonic(), accounted(out)
        supervisor.sleep(OUTAGE_S)
        during = accounted(out) - before
        proxy.start()
        supervisor.wait_until(
            lambda: accounted(out) >= 150, 120, "all photos after the broker came back", log
        )
        recovered_s = time.monotonic() - stopped_at - OUTAGE_S
        time.sleep(1.0)
    finally:
        supervisor.stop()
    score = scoreboard.record(
        account(
            "broker gone 30 s, back at the same address", [str(p) for p in photos], out,
            note=f"{during} rows while gone; done {recovered_s:.0f} s after; worker restarts {supervisor.restarts}",
        )
    )  # fmt: skip
    assert (score.duplicates, score.losses) == (0, 0)
    assert supervisor.restarts == 0, (
        f"the worker exited {supervisor.exit_codes} and had to be restarted"
    )
