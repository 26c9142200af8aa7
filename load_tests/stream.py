"""Streaming under load: N upload messages at a given rate through a real broker and real workers.

A local Tansu broker, a topic with `partitions` partitions, and `workers` real `trapline serve
--workers 0` processes (the StreamWorker code, one consumer each). The load generator announces
photos that are already in storage (local folder, or an fsspec URL such as s3://bucket/prefix
they are copied to first) at `rate` events/s, stamping `uploaded_at` at the moment of sending.

Measured by the benchmark itself, not read from the broker (Tansu's high watermark is wrong,
DESIGN.md): lag = events acknowledged by the broker minus rows written (media + failures), over
time; end-to-end latency = the row's `processed_at` minus the event's `uploaded_at`, per photo.
The workers' own Prometheus endpoints give batch fill, time per stage and bytes read (the
warm-up's share subtracted), and, polled during the run, when the workers had processed every
event (`processed_per_second`). That is the stream's throughput: the rows of each camera's last
burst are then still held for `sequence_hold_s` (pipelines/events.py), a fixed latency that
`events_per_second` (rows readable) includes and a long run amortises (`hold_tail_seconds`).
`stage_busy_share` = the workers' time inside the stages (read, decode, detect, classify) / (workers
x that time): the efficiency against a bound measured in the run itself, <= 1 by construction.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from load_tests.folder import WORKER_STAGES, folder_size
from load_tests.procstats import ProcessSampler
from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.adapters import kafka_io
from trapline.services.devstack.tansu import TansuServer, free_port, start_tansu, stop_process

PROCESSED = (
    "trapline_batch_size_sum"  # photos through the detector, per worker (services/run/metrics.py)
)
SESSION_TIMEOUT_MS = 6000  # Tansu assigns a new group after half of it (DESIGN.md)


@dataclass
class StreamOptions:
    rate: float  # events/s; 0 = as fast as the producer goes (saturates the workers)
    workers: int = 2
    partitions: int = 4
    batch_size: int = 8
    batch_max_records: int = 64
    commit_interval_s: float = 1.0
    storage: str | None = None  # fsspec URL the photos are copied to first; None: where they are
    # Which partition a camera's events go to. "even": camera k of the run on partition
    # k % partitions, so each worker gets its share (what thousands of cameras average out to);
    # "key": Kafka's default murmur2 of the key, as `trapline submit` and the upload API send
    # them: with the bench's 4 cameras, 3 hash to partition 0 and one worker does 75 % of the work.
    placement: str = "even"
    serve_workers: int = 0  # `trapline serve --workers`: 0 in-process, >= 1 Ray actors per process
    timeout_s: float = 300.0


@dataclass
class _Produced:
    uploaded_at: dict[str, datetime] = field(default_factory=dict)  # media_id -> sent at
    acked: int = 0
    failed: list[str] = field(default_factory=list)
    event_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _RowCounter:
    """Rows committed so far (media + failures), from each table's log: the `numRecords` of the
    data-changing adds of every new commit file.

    Not the part files on storage: the writers' OPTIMIZE (every 50 versions) rewrites small
    files into one with `dataChange: false`, and the replaced files stay on storage until a
    VACUUM, so counting files counted those rows twice and ended a long run early."""

    def __init__(self, out: Path):
        self.out = out
        self.seen: dict[Path, int] = {}

    def count(self) -> int:
        for table in ("media", "failures"):
            log = self.out / table / "_delta_log"
            if log.is_dir():
                for commit in log.glob("*.json"):  # a commit file appears whole (renamed)
                    if commit not in self.seen:
                        self.seen[commit] = _rows_added(commit)
        return sum(self.seen.values())


def _rows_added(commit: Path) -> int:
    rows = 0
    for line in commit.read_text().splitlines():
        add = json.loads(line).get("add") if line.strip() else None
        if add and add.get("dataChange", True):
            rows += json.loads(add.get("stats") or "{}").get("numRecords", 0)
    return rows


def _events(paths: list[Path], storage: str | None) -> list[tuple[str, str, str]]:
    """(media_id, uri, deployment) per photo; copies the photos to `storage` first if given."""
    events = []
    for path in paths:
        data = path.read_bytes()
        media_id = hashlib.sha256(data).hexdigest()
        uri = f"file://{path.resolve()}"
        if storage:
            import fsspec

            uri = f"{storage.rstrip('/')}/{path.parent.name}/{path.name}"
            with fsspec.open(uri, "wb") as handle:
                handle.write(data)
        events.append((media_id, uri, path.parent.name))
    return events


def worker_env(broker: TansuServer, topic: str, group: str, **settings: object) -> dict[str, str]:
    """The environment of a benchmark's `trapline serve` worker: this broker, topic and group,
    any photo path allowed (the benchmark's own, wherever --cache / --storage put them; serve's
    default roots are the upload prefix and --out: docs/security.md), plus `settings` as
    TRAPLINE_<NAME> variables."""
    env = dict(
        os.environ,
        TRAPLINE_KAFKA_BOOTSTRAP=broker.bootstrap,
        TRAPLINE_UPLOADS_TOPIC=topic,
        TRAPLINE_DLQ_TOPIC=f"{topic}.dlq",
        TRAPLINE_CONSUMER_GROUP=group,
        TRAPLINE_THREADS_PER_WORKER="1",
        TRAPLINE_STORAGE_ROOTS='["*"]',
    )
    env.update({f"TRAPLINE_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def _start_worker(
    broker: TansuServer, topic: str, group: str, out: Path, options: StreamOptions, port: int
):
    env = worker_env(
        broker, topic, group, session_timeout_ms=SESSION_TIMEOUT_MS,
        batch_max_records=options.batch_max_records, commit_interval_s=options.commit_interval_s,
        batch_size=options.batch_size, metrics_port=port,
    )  # fmt: skip
    workers = str(options.serve_workers)  # >= 1: Ray actors, on RAY_ADDRESS's cluster if set
    command = [sys.executable, "-m", "trapline", "serve", "--workers", workers, "--out", str(out)]
    log = open(out.parent / f"worker-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _produce(
    producer, topic: str, events, rate: float, produced: _Produced, partitions: int | None = None
) -> None:
    """Send `events` paced at `rate`/s (0: unpaced), `uploaded_at` = the moment of sending;
    keyed by camera, and with `partitions`, camera k (in sorted order) on partition k % it."""
    cameras = {name: k for k, name in enumerate(sorted({e[2] for e in events}))}
    started = time.monotonic()
    for number, (media_id, uri, deployment) in enumerate(events):
        if rate:
            time.sleep(max(0.0, started + number / rate - time.monotonic()))
        now = datetime.now(timezone.utc)
        value = encode_upload(
            Upload(
                uri=uri,
                deployment_id=deployment,
                media_id=media_id,
                sha256=media_id,
                uploaded_at=now,
            )
        )
        with produced.lock:
            produced.uploaded_at[media_id] = now
            produced.event_bytes += len(value)

        def acked(_meta, produced=produced) -> None:
            with produced.lock:
                produced.acked += 1

        def failed(error, produced=produced, media_id=media_id) -> None:
            with produced.lock:
                produced.failed.append(f"{media_id}: {error}")

        partition = None if partitions is None else cameras[deployment] % partitions
        future = producer.send(topic, key=deployment.encode(), value=value, partition=partition)
        future.add_callback(acked)
        future.add_errback(failed)
    producer.flush(timeout=60)


def scrape_metrics(port: int) -> dict[str, float]:
    """The worker's Prometheus metrics we report, summed over label sets we do not split."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if sample.name.startswith("trapline_stage_seconds_"):
                key = f"{sample.name}:{sample.labels.get('stage')}"
            values[key] = values.get(key, 0.0) + sample.value
    return values


def _wait_rows(counter: _RowCounter, expected: int, deadline: float, workers) -> None:
    while counter.count() < expected:
        for process, _ in workers:
            if process.poll() is not None:
                raise RuntimeError(f"stream worker exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{counter.count()} of {expected} rows written before the deadline")
        time.sleep(0.2)


def run_stream_bench(
    paths: list[Path],
    warmup: list[Path],
    options: StreamOptions,
    inspect: Callable[[Path, Path | None], dict] | None = None,
) -> dict:
    """Warm up (group joined, models loaded), then `paths` at `options.rate`; figures as a dict.
    `inspect(out, None)` measures the output before it is removed (load_tests/growth.py)."""
    work = Path(tempfile.mkdtemp(prefix="trapline-bench-stream-"))
    out = work / "out"
    out.mkdir()
    topic = f"bench.uploads.{uuid.uuid4().hex[:8]}"
    events = _events(paths, options.storage)
    warm = _events(warmup, options.storage)
    workers: list = []
    try:
        with start_tansu() as broker:
            kafka_io.ensure_topics(broker.bootstrap, [topic, f"{topic}.dlq"], options.partitions)
            ports = [free_port() for _ in range(options.workers)]
            workers = [_start_worker(broker, topic, "bench", out, options, port) for port in ports]
            # A process's actor i serves metrics on its port + i (services/run/stream.py).
            ports = [port + i for port in ports for i in range(max(options.serve_workers, 1))]
            producer = kafka_io.make_producer(broker.bootstrap, client_id="trapline-bench")
            counter = _RowCounter(out)
            deadline = time.monotonic() + options.timeout_s
            warm_produced = _Produced()
            placed = options.partitions if options.placement == "even" else None
            _produce(producer, topic, warm, 0, warm_produced, placed)
            _wait_rows(counter, len(warm), deadline, workers)

            produced = _Produced()
            find = lambda: {f"worker-{p.pid}": p.pid for p, _ in workers}  # noqa: E731
            timeline: list[tuple[float, int, int]] = []  # (t, acked, processed), measured events
            base = counter.count()
            base_metrics = [scrape_metrics(port) for port in ports]  # the warm-up's share
            processed_base = sum(m.get(PROCESSED, 0.0) for m in base_metrics)
            all_processed_at: float | None = None  # s after the start: every event processed
            started = time.monotonic()
            sender = threading.Thread(
                target=_produce,
                args=(producer, topic, events, options.rate, produced, placed),
                daemon=True,
            )
            with ProcessSampler(find) as sampler:
                sender.start()
                while True:
                    done = counter.count() - base
                    now = time.monotonic() - started
                    timeline.append((now, produced.acked, done))
                    if all_processed_at is None and _processed(ports) - processed_base >= len(
                        events
                    ):
                        all_processed_at = now
                    if done >= len(events):
                        break
                    if produced.failed:
                        raise RuntimeError(f"events not delivered: {produced.failed[:3]}")
                    for process, _ in workers:
                        if process.poll() is not None:
                            raise RuntimeError(
                                f"stream worker exited with status {process.returncode}"
                            )
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{done} of {len(events)} rows written before the deadline"
                        )
                    time.sleep(0.25)
                sender.join(60)
            metrics = [
                {k: v - before.get(k, 0.0) for k, v in scrape_metrics(port).items()}
                for port, before in zip(ports, base_metrics)
            ]
            producer.close(timeout=5)
            # What reached the dead-letter topic (at least once): read until quiet, since
            # Tansu's high watermark cannot say where the topic ends (kafka_io.read_topic).
            dead_letters = kafka_io.read_topic(
                broker.bootstrap, f"{topic}.dlq", len(warm) + len(events) + 1, timeout_s=10
            )
            for process, _ in workers:
                process.send_signal(signal.SIGTERM)
            for process, log in workers:
                stop_process(process, 30)
                log.close()
        figures = _figures(
            out, events, produced, timeline, metrics, sampler, options, folder_size(out),
            all_processed_at,
        )  # fmt: skip
        figures["dead_letter_records"] = len(dead_letters)
        nodes = _actor_nodes(work)
        figures["per_worker"] = [
            {"metrics_port": port, "processed": round(m.get(PROCESSED, 0.0)),
             "ray_node": nodes.get(port)}
            for port, m in zip(ports, metrics)
        ]  # fmt: skip
        if inspect:
            figures["inspected"] = inspect(out, None)
        return figures
    finally:
        for process, log in workers:
            stop_process(process, 5)
            log.close()
        shutil.rmtree(work, ignore_errors=True)


def _actor_nodes(work: Path) -> dict[int, str]:
    """Metrics port -> Ray node id of each stream actor, from the "runs on Ray node" lines of
    the `trapline serve` logs (in-process workers have none)."""
    import re

    found = {}
    for log in work.glob("worker-*.log"):
        port = int(log.stem.split("-")[1])
        for line in log.read_text(errors="replace").splitlines():
            try:
                message = json.loads(line).get("message", "")
            except (ValueError, AttributeError):
                continue
            match = re.fullmatch(r"worker (\d+) runs on Ray node (\S+)", message)
            if match:
                found[port + int(match[1])] = match[2]
    return found


def _processed(ports: list[int]) -> float:
    """Photos the workers have run through the stages so far (0 for a worker not answering)."""
    total = 0.0
    for port in ports:
        try:
            total += scrape_metrics(port).get(PROCESSED, 0.0)
        except OSError:
            pass
    return total


def _figures(
    out, events, produced, timeline, metrics, sampler, options, written, all_processed_at
) -> dict:
    media = read_table(str(out), "media", columns=["media_id", "processed_at"])
    processed_at = dict(
        zip(media.column("media_id").to_pylist(), media.column("processed_at").to_pylist())
    )
    latencies, finish = [], []
    for media_id, _, _ in events:
        if media_id in processed_at:
            seconds = (processed_at[media_id] - produced.uploaded_at[media_id]).total_seconds()
            latencies.append(seconds)
            finish.append(
                (processed_at[media_id] - min(produced.uploaded_at.values())).total_seconds()
            )
    n = len(events)
    duration = timeline[-1][0] if timeline else 0.0
    all_processed_at = all_processed_at or duration  # not seen while polling: the rows bound it
    total = lambda key: sum(m.get(key, 0.0) for m in metrics)  # noqa: E731
    batches = total("trapline_batch_size_count")
    stages = sorted(
        {
            k.split(":", 1)[1]
            for m in metrics
            for k in m
            if k.startswith("trapline_stage_seconds_sum:")
        }
    )
    pct = lambda q: round(float(np.percentile(latencies, q)), 3) if latencies else None  # noqa: E731
    order = np.argsort(finish)
    return {
        "events": n,
        "rate_requested": options.rate,
        "workers": options.workers,
        "partitions": options.partitions,
        "batch_max_records": options.batch_max_records,
        "commit_interval_s": options.commit_interval_s,
        "batch_size": options.batch_size,
        "storage": options.storage or "local",
        "placement": options.placement,
        "rows_written": timeline[-1][2] if timeline else 0,
        "media_rows": len(latencies),
        "events_per_second": round(n / duration, 3) if duration else 0.0,
        "processed_per_second": round(n / all_processed_at, 3) if all_processed_at else 0.0,
        "hold_tail_seconds": round(duration - all_processed_at, 3),
        "stage_busy_share": round(
            sum(total(f"trapline_stage_seconds_sum:{s}") for s in WORKER_STAGES)
            / (options.workers * max(options.serve_workers, 1) * all_processed_at),  # consumers
            3,
        )
        if all_processed_at
        else None,
        "latency_seconds": {"p50": pct(50), "p95": pct(95), "p99": pct(99), "max": pct(100)},
        "lag_max": max((a - p for _, a, p in timeline), default=0),
        "lag_final": (timeline[-1][1] - timeline[-1][2]) if timeline else 0,
        "mean_batch_fill": round(total("trapline_batch_size_sum") / batches / options.batch_size, 3)
        if batches
        else 0.0,
        "stage_seconds_per_photo": {
            s: round(total(f"trapline_stage_seconds_sum:{s}") / n, 5) for s in stages
        },
        "bytes_read_per_photo": round(total("trapline_bytes_read_total") / n),
        "bytes_written_per_photo": round(written / n),
        "event_bytes_per_photo": round(produced.event_bytes / n),
        "processes": sampler.summary(),
        "rss_timeline_mb": sampler.rss_timeline(),
        "timeline": [[round(t, 3), acked, done] for t, acked, done in timeline],
        "latency_timeline": [[round(finish[i], 3), round(latencies[i], 3)] for i in order],
    }
