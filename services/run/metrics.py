"""Prometheus metrics, and the HTTP endpoint that serves them with /healthz and /readyz.

One endpoint per worker process: every Ray actor (and `workers=0`'s single process) serves its
own `/metrics` on `metrics_port + worker_index`, and Prometheus scrapes each pod/port (the Helm
chart's ServiceMonitor lists them). This keeps prometheus-client's plain in-process registry and
needs no Ray metrics agent. Labels are bounded: stage, kind, topic, partition, category; never a
media id or a URI.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from trapline.pipelines import compaction

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_E2E_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

EVENTS_CONSUMED = Counter("trapline_events_consumed_total", "Kafka records consumed.", ["topic"])
PHOTOS_PROCESSED = Counter(
    "trapline_photos_processed_total", "Photos written to the media table.", ["observation_type"]
)
PHOTOS_FAILED = Counter(
    "trapline_photos_failed_total", "Inputs written to the failures table.", ["stage", "kind"]
)
DEAD_LETTERS = Counter(
    "trapline_dead_letters_total", "Records sent to the dead-letter topic.", ["kind"]
)
BATCH_SIZE = Histogram(
    "trapline_batch_size",
    "Images per model batch.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
STAGE_SECONDS = Histogram(
    "trapline_stage_seconds",
    "Time one batch spent in a stage.",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "trapline_end_to_end_seconds",
    "From the event's uploaded_at to its row being written.",
    buckets=_E2E_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "trapline_consumer_lag_records",
    "End offset minus next offset to write.",
    ["topic", "partition"],
)
INFLIGHT_BATCHES = Gauge("trapline_inflight_batches", "Batches being processed now.")
HELD_RECORDS = Gauge(
    "trapline_held_records",
    "Records read from the broker and not yet written; a partition stops fetching at "
    "4 x batch_max_records, so a backlog shows as lag, not here.",
)
BYTES_READ = Counter("trapline_bytes_read_total", "Photo bytes read from storage.")
BYTES_WRITTEN = Counter(
    "trapline_bytes_written_total",
    "Row bytes committed to the tables (Arrow size, before Parquet compression).",
)
CHECKPOINTS = Counter(
    "trapline_checkpoints_total", "Checkpoints that committed every table for their batches."
)
CHECKPOINT_RETRIES = Counter(
    "trapline_checkpoint_retries_total",
    "Checkpoints put back to be retried after an outage (model backend, storage, dead-letter topic).",
    ["cause"],
)
TABLE_COMMITS = Counter("trapline_table_commits_total", "Delta commits made, per table.", ["table"])
COMMITS_REFUSED = Counter(
    "trapline_commits_refused_total",
    "Delta commits refused because another writer committed one of our partitions first.",
    ["table"],
)
BATCHES_FENCED = Counter(
    "trapline_batches_fenced_total",
    "Partition batches dropped because the tables show another worker moved the partition on.",
)
OFFSETS_WITHOUT_RECORDS = Counter(
    "trapline_offsets_without_records_total",
    "Offsets a partition skipped because the broker holds no record there, fetched twice "
    "(transaction markers, aborted or compacted records, or deleted by retention).",
    ["topic"],
)
PARTITIONS_REFUSED = Gauge(
    "trapline_partitions_refused",
    "Partitions a worker refuses to read: the tables hold offsets past the topic's (re-created "
    "or moved topic); see docs/operations.md, 'Tables ahead of the topic'.",
)
MODEL_REQUEST_SECONDS = Histogram(
    "trapline_model_request_seconds", "Model backend request latency.", ["model", "backend"],
    buckets=_LATENCY_BUCKETS,
)  # fmt: skip
MODEL_ERRORS = Counter(
    "trapline_model_errors_total", "Model backend request errors.", ["model", "backend"]
)
# trapline/errors.py's two classes, by stage (read, decode, detect, classify): an outage is
# waited out (the batch is retried), a permanent error is one input's failures row.
RETRYABLE_ERRORS = Counter(
    "trapline_retryable_errors_total",
    "Outages met by a stage (storage or model unreachable, 5xx, timeout); the batch is retried.",
    ["stage"],
)
PERMANENT_ERRORS = Counter(
    "trapline_permanent_errors_total",
    "Inputs a stage refused for good (missing, forbidden, undecodable, too large, model error).",
    ["stage"],
)

COMPACTION_OVERLAPS = Counter(
    "trapline_compaction_overlaps_total",
    "OPTIMIZEs that rewrote files another commit had removed (rows read twice): repaired, or "
    "not_repaired (an operator must act, docs/operations.md#compaction).",
    ["table", "outcome"],
)


def count_compaction_overlap(table: str, outcome: str) -> None:
    """What pipelines/compaction.py calls: it runs inside every writer's commit path."""
    COMPACTION_OVERLAPS.labels(table, outcome).inc()


compaction.overlap_counters.append(count_compaction_overlap)


def count_stage_error(stage: str, retryable: bool) -> None:
    """The counter `PhotoPipeline` calls (pipelines/flow.py): stages do not import metrics."""
    (RETRYABLE_ERRORS if retryable else PERMANENT_ERRORS).labels(stage).inc()


def consumer_lag(
    end_offsets: dict[tuple[str, int], int], next_offsets: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Lag per partition: records in the log not yet written. Never negative.

    Compute it from a real Kafka's end offsets; Tansu reports a wrong high watermark (DESIGN.md).
    """
    return {key: max(0, end - next_offsets.get(key, 0)) for key, end in end_offsets.items()}


def publish_lag(lag: dict[tuple[str, int], int]) -> None:
    for (topic, partition), value in lag.items():
        CONSUMER_LAG.labels(topic, str(partition)).set(value)


def forget_partition(topic: str, partition: int) -> None:
    """A revoked partition's lag is its new owner's to report: drop ours, or the sum doubles."""
    try:
        CONSUMER_LAG.remove(topic, str(partition))
    except KeyError:
        pass  # never reported by this worker


class HealthServer:
    """Serves /metrics, /healthz (the process is alive) and /readyz (dependencies reachable)."""

    def __init__(
        self, port: int, readiness: Callable[[], dict[str, bool]] = dict, host: str = "0.0.0.0"
    ):
        handler = _handler(readiness)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="metrics"
        )

    def start(self) -> HealthServer:
        self.thread.start()
        log.info("metrics, /healthz and /readyz on port %d", self.port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(readiness: Callable[[], dict[str, bool]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                self._send(200, b"ok\n", "text/plain")
            elif self.path.startswith("/readyz"):
                try:
                    checks = readiness()
                except Exception as error:  # noqa: BLE001 - a failing probe is "not ready"
                    checks = {"probe": False, "error": str(error)}  # type: ignore[dict-item]
                ready = all(v is True for v in checks.values())
                body = json.dumps({"ready": ready, "checks": checks}).encode()
                self._send(200 if ready else 503, body, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes every 15 s would flood the log
            pass

    return Handler


def observe_batch(stage_seconds: dict[str, float], images: int, bytes_read: int) -> None:
    """What one PhotoPipeline batch cost, stage by stage."""
    for stage, seconds in stage_seconds.items():
        STAGE_SECONDS.labels(stage).observe(seconds)
    if images:
        BATCH_SIZE.labels("detector").observe(images)
    BYTES_READ.inc(bytes_read)


def observe_tables(media_types: list[str], failures: list[tuple[str, str]]) -> None:
    """Rows written: media by observation type, failures by stage and kind."""
    for observation_type in media_types:
        PHOTOS_PROCESSED.labels(observation_type).inc()
    for stage, kind in failures:
        PHOTOS_FAILED.labels(stage, kind).inc()
