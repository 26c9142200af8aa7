import json
import urllib.error
import urllib.request

from trapline.services.run import metrics


def test_lag_is_end_minus_next_offset_and_never_negative():
    ends = {("t", 0): 100, ("t", 1): 5, ("t", 2): 7}
    nexts = {("t", 0): 60, ("t", 1): 9}
    assert metrics.consumer_lag(ends, nexts) == {("t", 0): 40, ("t", 1): 0, ("t", 2): 7}


def test_a_revoked_partitions_lag_series_is_dropped_so_owners_do_not_double_count():
    metrics.publish_lag({("lagtest", 0): 40, ("lagtest", 1): 3})
    metrics.forget_partition("lagtest", 0)
    metrics.forget_partition("lagtest", 7)  # never reported here: no error
    text = (
        metrics.generate_latest(metrics.REGISTRY).decode() if hasattr(metrics, "REGISTRY") else None
    )
    samples = {
        s.labels["partition"]: s.value
        for family in metrics.CONSUMER_LAG.collect()
        for s in family.samples
        if s.labels.get("topic") == "lagtest"
    }
    assert samples == {"1": 3.0}
    assert text is None or 'partition="0",topic="lagtest"' not in text


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_endpoint_serves_metrics_health_and_readiness():
    checks = {"broker": True, "storage": True}
    server = metrics.HealthServer(0, lambda: dict(checks), host="127.0.0.1").start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        metrics.observe_batch({"decode": 0.02, "detect": 0.1}, images=8, bytes_read=1000)
        metrics.observe_tables(["animal", "blank"], [("decode", "truncated")])
        status, body = get(base + "/metrics")
        assert status == 200
        text = body.decode()
        assert 'trapline_stage_seconds_count{stage="decode"}' in text
        assert 'trapline_photos_failed_total{kind="truncated",stage="decode"}' in text
        assert get(base + "/healthz")[0] == 200
        status, body = get(base + "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        checks["broker"] = False
        status, body = get(base + "/readyz")
        assert status == 503 and json.loads(body)["checks"]["broker"] is False
    finally:
        server.stop()
