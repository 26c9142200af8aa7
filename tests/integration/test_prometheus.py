"""Alert rules, dashboard and metrics against a real Prometheus.

- `promtool check rules` / `promtool test rules` on helm/rules (every alert fires and stays quiet
  as its unit tests say);
- every alert carries severity, summary, description and a runbook anchor that exists in
  docs/operations.md;
- the Grafana dashboard asks only for metrics the workers export;
- a real `prometheus` (1 s scrapes, the alert rules loaded) scrapes a real `StreamWorker` fed
  through a real Kafka-protocol broker (Tansu) until every submitted photo is counted, and every
  dashboard query runs on it without a PromQL error.

promtool and prometheus come from Debian (`scripts/install_prometheus.sh`); without them these
tests skip and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from support.servers import TEST_SESSION_TIMEOUT_MS

from trapline.services.run import metrics
from trapline.services.run.stream import StreamWorker
from trapline.services.run.workers import build_pipeline
from trapline.services.settings import Settings
from trapline.services.tools.submit import submit_folder

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "rules" / "trapline-alerts.yaml"
RULE_TESTS = ROOT / "helm" / "rules" / "trapline-alerts.test.yaml"
DASHBOARD = ROOT / "helm" / "dashboards" / "trapline.json"
OPERATIONS = ROOT / "docs" / "operations.md"
WORKER_JOB = "trapline-worker"  # the job name the rules and the chart's monitors use

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed: run scripts/install_prometheus.sh (CI does)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed: run scripts/install_prometheus.sh (CI does)",
)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_queries() -> list[str]:
    def panels(items: list[dict]):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    board = json.loads(DASHBOARD.read_text())
    return [
        t["expr"] for p in panels(board["panels"]) for t in p.get("targets", []) if t.get("expr")
    ]


def as_instant_query(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, runnable on the HTTP API."""
    for variable, value in {
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$topic": ".*",
        "$job": WORKER_JOB,
    }.items():
        expr = expr.replace(variable, value)
    return expr


# ------------------------------------------------------------------------------------- rules


@needs_promtool
def test_alert_rules_pass_promtool_check():
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_say():
    result = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert {rule["alert"] for rule in alert_rules()} <= tested, "an alert without a unit test"


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor == name.lower(), name
        assert anchor in headings, f"docs/operations.md has no section '### {name}'"


# ------------------------------------------------------------------------------------- dashboard


def exported_metric_names() -> set[str]:
    """Every sample name the workers' metrics module can export (all its collectors)."""
    names = set()
    collectors = [c for c in vars(metrics).values() if isinstance(c, MetricWrapperBase)]
    assert len(collectors) >= 14
    for collector in collectors:
        for family in collector.describe():
            base = family.name
            kind = family.type
            if kind == "counter":
                names.add(f"{base}_total")
            elif kind == "histogram":
                names.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
            else:
                names.add(base)
    return names


def test_dashboard_asks_only_for_metrics_the_workers_export():
    queries = dashboard_queries()
    assert len(queries) >= 15
    used = {name for expr in queries for name in re.findall(r"\btrapline_[a-z_]+", expr)}
    assert used, "the dashboard has no trapline_ query"
    assert used <= exported_metric_names(), (
        f"unknown metrics: {sorted(used - exported_metric_names())}"
    )
    wanted = {
        "trapline_photos_processed_total", "trapline_photos_failed_total", "trapline_consumer_lag_records",
        "trapline_end_to_end_seconds_bucket", "trapline_stage_seconds_bucket", "trapline_batch_size_sum",
        "trapline_inflight_batches", "trapline_dead_letters_total", "trapline_bytes_read_total",
        "trapline_bytes_written_total",
    }  # fmt: skip
    assert wanted <= used, f"dashboard misses {sorted(wanted - used)}"


# ------------------------------------------------------------------------------------- live


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def counted(*counters) -> float:
    """This process's running total of labelled counters (other tests ran workers before us)."""
    return sum(
        s.value
        for c in counters
        for family in c.collect()
        for s in family.samples
        if s.name.endswith("_total")
    )


class Prometheus:
    def __init__(self, tmp: Path, targets: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {
                "scrape_interval": "1s",
                "evaluation_interval": "1s",
                "scrape_timeout": "900ms",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": WORKER_JOB, "static_configs": [{"targets": targets}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        self.process = subprocess.Popen(
            [
                PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
            ],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready on {self.url}:\n{self.log.read_text()}")

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422: a bad query; the body says why
            return json.loads(error.read())

    def value(self, expr: str) -> float | None:
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body}"
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@needs_prometheus
def test_prometheus_scrapes_a_real_worker_until_every_photo_is_counted(
    tansu, kafka_topic, make_jpeg, tmp_path
):
    photos = tmp_path / "card" / "cam-prom"
    photos.mkdir(parents=True)
    for index in range(6):
        (photos / f"IMG_{index:04d}.jpg").write_bytes(make_jpeg(640, 480, seed=index))
    (photos / "IMG_9999.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")  # a failures row
    topic = kafka_topic("prom", partitions=1)
    report = submit_folder(str(photos.parent), tansu.bootstrap, topic, "cam-prom")
    assert report.submitted == 7, report.failures

    settings = Settings(
        kafka_bootstrap=tansu.bootstrap, uploads_topic=topic, dlq_topic=f"{topic}.dlq",
        consumer_group=f"g-prom-{uuid.uuid4().hex[:8]}", session_timeout_ms=TEST_SESSION_TIMEOUT_MS,
        commit_interval_s=0.5, workers=0,
    )  # fmt: skip
    before = counted(metrics.PHOTOS_PROCESSED, metrics.PHOTOS_FAILED)
    worker = StreamWorker(settings, str(tmp_path / "out"), build_pipeline(settings))
    health = metrics.HealthServer(0, worker.readiness, host="127.0.0.1").start()
    thread = threading.Thread(target=worker.run, name="stream-worker", daemon=True)
    thread.start()
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{health.port}"])
    try:
        expected = before + report.submitted
        total = "sum(trapline_photos_processed_total) + sum(trapline_photos_failed_total)"
        seen = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = prometheus.value(total)
            if seen == expected:
                break
            assert thread.is_alive(), "the worker stopped early"
            time.sleep(0.5)
        assert seen == expected, f"Prometheus counts {seen} inputs, expected {expected}"
        assert prometheus.value(f'up{{job="{WORKER_JOB}"}}') == 1
        assert prometheus.value('sum(trapline_photos_failed_total{stage="decode"})') >= 1
        for stage in ("decode", "detect"):
            count = prometheus.value(f'sum(trapline_stage_seconds_count{{stage="{stage}"}})')
            assert count and count > 0, f"no {stage} timings scraped"

        for expr in dashboard_queries():  # every panel's PromQL parses and runs on real data
            body = prometheus.api("query", query=as_instant_query(expr))
            assert body["status"] == "success", f"dashboard query {expr!r}: {body.get('error')}"
        rules = prometheus.api("rules")["data"]["groups"]
        assert {g["name"] for g in rules} == {"trapline.workers", "trapline.triton"}
        broken = [r["name"] for g in rules for r in g["rules"] if r.get("health") == "err"]
        assert not broken, f"rules failing on live data: {broken}"
    finally:
        worker.stop()
        thread.join(20)
        health.stop()
        prometheus.stop()
    assert not thread.is_alive()
