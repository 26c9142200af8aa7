"""Triton stopped in the middle of a run: the worker keeps its segment (nothing written, nothing
committed), retries with backoff, and finishes once the same server is back on its ports. While
it waits it fetches nothing past its bound: the rest stays in the broker."""

from __future__ import annotations

import time

import pytest
from support.harness import (
    account,
    accounted,
    held_records,
    read_rows,
    start_worker,
    stop_workers,
    wait_until,
    worker_env,
)
from support.stream_workers import make_photos
from support.triton_repos import demo_repository

from trapline.services.devstack.tansu import free_port
from trapline.services.devstack.triton import start_triton
from trapline.services.tools.submit import submit_folder

OUTAGE_S = 10.0


@pytest.fixture(scope="module")
def triton_repository(tmp_path_factory):
    return demo_repository(tmp_path_factory.mktemp("triton-repo"))


def test_triton_stopped_mid_run_then_restarted_every_photo_once(
    tansu, kafka_topic, triton_repository, tmp_path, scoreboard
):
    topic = kafka_topic("triton-outage", partitions=2)
    photos = make_photos(tmp_path / "card", 120, deployments=4, seed=21)
    assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 120
    out, log = tmp_path / "out", tmp_path / "worker.log"
    triton = start_triton(triton_repository)
    ports = dict(
        http_port=triton.http_port, grpc_port=triton.grpc_port, metrics_port=triton.metrics_port
    )
    worker_metrics = free_port()
    env = worker_env(
        tansu.bootstrap, topic, "g-triton-outage", batch_max_records=5, poll_max_records=10,
        model_backend="triton", triton_url=triton.grpc_url, triton_retries=1, triton_timeout_s=5,
        metrics_port=worker_metrics,
    )  # fmt: skip
    # Two partitions, each paused at 4 x batch_max_records, one poll over: fewer than the ~110
    # photos still unwritten when Triton stops, which a worker without the bound reads in.
    held_bound = 2 * (4 * 5 + 10)
    worker = start_worker(env, out, log)
    try:
        wait_until(
            lambda: accounted(out) >= 10, 90, "the first segments through Triton", [worker], log
        )
        triton.stop()
        stopped_at, written_before = time.monotonic(), accounted(out)
        time.sleep(OUTAGE_S)
        assert worker.poll() is None, "the worker must outlive a model-server outage"
        written_during = accounted(out) - written_before
        held_during = held_records(worker_metrics)
        triton = start_triton(triton_repository, **ports)
        wait_until(
            lambda: accounted(out) >= 120, 120, "all photos after Triton came back", [worker], log
        )
        resumed_after = time.monotonic() - stopped_at
        time.sleep(1.0)
    finally:
        stop_workers([worker])
        triton.stop()
    failures = read_rows(out, "failures")
    score = scoreboard.record(
        account(
            "Triton stopped 10 s mid-run", [str(p) for p in photos], out,
            note=f"done {resumed_after:.0f} s after stop; {len(failures)} failed; held {held_during}",
        )
    )  # fmt: skip
    assert (score.duplicates, score.losses) == (0, 0)
    assert written_during <= 20  # at most the segments already past the model when it stopped
    assert held_during <= held_bound < 120 - written_before - written_during
    # Every photo is valid: an outage must delay them, not fail them.
    assert not failures, f"{len(failures)} photos failed: {failures[0]['message'][:300]}"
    assert "model backend unavailable" in log.read_text(errors="replace")  # it saw the outage
