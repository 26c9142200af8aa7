"""Stream workers as real processes for the tests: photos, `trapline serve` subprocesses,
their environment, and waiting for rows."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from support.servers import TEST_SESSION_TIMEOUT_MS
from trapline.pipelines.readers import read_table
from trapline.services.adapters import kafka_io


def make_photos(folder: Path, count: int, deployments: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=70)
        path = folder / f"dep-{index % deployments}" / f"IMG_{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def worker_env(bootstrap: str, topic: str, group: str, **settings: Any) -> dict[str, str]:
    """Environment of a `trapline serve --workers 0` process for a test topic and group."""
    env = dict(
        os.environ,
        TRAPLINE_KAFKA_BOOTSTRAP=bootstrap,
        TRAPLINE_UPLOADS_TOPIC=topic,
        TRAPLINE_DLQ_TOPIC=f"{topic}.dlq",
        TRAPLINE_CONSUMER_GROUP=group,
        TRAPLINE_SESSION_TIMEOUT_MS=str(TEST_SESSION_TIMEOUT_MS),
        TRAPLINE_BATCH_MAX_RECORDS="50",
        TRAPLINE_COMMIT_INTERVAL_S="0.5",
        TRAPLINE_METRICS_PORT="0",
        TRAPLINE_BATCH_SIZE="16",
        PYTHONUNBUFFERED="1",
        # Photos come from each test's temporary folders, outside serve's default roots
        # (upload prefix and --out): allowed on purpose (services/run/serve_roots.py).
        TRAPLINE_STORAGE_ROOTS='["*"]',
    )
    env.update({f"TRAPLINE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_worker(tansu, topic: str, group: str, out: Path) -> subprocess.Popen:
    env = worker_env(tansu.bootstrap, topic, group)
    command = [sys.executable, "-m", "trapline", "serve", "--workers", "0", "--out", str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def table_rows(out: Path, table: str) -> list[dict]:
    return read_table(str(out), table).to_pylist()


def wait_for_rows(
    out: Path, expected: int, timeout_s: float, workers: list[subprocess.Popen]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(table_rows(out, "media")) + len(table_rows(out, "failures")) >= expected:
            return
        for worker in workers:
            if worker.poll() is not None:
                raise AssertionError(
                    f"worker exited {worker.returncode}: {worker.stderr.read().decode()[-2000:]}"
                )
        time.sleep(0.5)
    raise AssertionError(
        f"timed out: {len(table_rows(out, 'media'))} media, {len(table_rows(out, 'failures'))} failures, expected {expected}"
    )


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=60)


def send(tansu, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = kafka_io.make_producer(tansu.bootstrap)
    kafka_io.wait_delivered([producer.send(topic, key=k, value=v) for k, v in messages])
    producer.close()
