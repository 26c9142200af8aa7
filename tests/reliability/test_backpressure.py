"""Back-pressure: events arrive faster than the models can take them. The backlog must stay in
the broker (lag grows), not in the worker (its memory stays flat): no unbounded queue. The
worker's own count of records read and not written (`trapline_held_records`, scraped from its
/metrics) must stay under its bound; an outage, where no checkpoint succeeds, is the same
bound's unit test (tests/unit/test_stream_worker.py)."""

from __future__ import annotations

import threading
import time
from statistics import median

from support.harness import (
    held_records,
    read_rows,
    rss_bytes,
    start_worker,
    stop_workers,
    wait_until,
    worker_env,
)
from support.stream_workers import make_photos

from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.adapters import kafka_io
from trapline.services.devstack.tansu import free_port

EVENTS = 1200
RATE = 100  # events/s offered, well above what the demo models do on these 2 shared cores
# Bytes of attributes per event: the backlog grows by ~150 MB while measured, plain in RSS if
# the worker held it, while what a partition may hold (HELD_BOUND / 2 records) is ~13 MB.
PADDING = 256_000  # 64 attributes of 4,000 characters: the most an upload may carry
SECRET = "bp-secret-key-0123456789abcdef"


WARM_UP = 64  # events processed before measuring: models loaded, full batches run, segments written
BATCH_MAX_RECORDS = POLL_MAX_RECORDS = 10
# Two partitions, each paused at 4 x batch_max_records (held_records_limit), one poll over.
HELD_BOUND = 2 * (4 * BATCH_MAX_RECORDS + POLL_MAX_RECORDS)


def _produce(
    bootstrap: str, topic: str, photos: list, sent: list[int], first: int, last: int
) -> None:
    producer = kafka_io.make_producer(bootstrap)
    padding = {f"note{i}": "x" * 4000 for i in range(PADDING // 4000)}
    started = time.monotonic()
    futures = []
    for index in range(first, last):
        event = Upload(
            uri=photos[index].as_uri(),
            deployment_id="dep-0",
            media_id=f"bp-{index:05d}",
            attributes=padding,
        )
        futures.append(producer.send(topic, key=b"dep-0", value=encode_upload(event)))
        sent[0] = index + 1
        time.sleep(max(0.0, started + (index + 1 - first) / RATE - time.monotonic()))
    kafka_io.wait_delivered(futures)
    producer.close()


def test_a_slow_model_backend_grows_lag_not_worker_memory(tansu, kafka_topic, tmp_path, scoreboard):
    topic = kafka_topic("backpressure", partitions=2)
    # One photo per event: the same bytes under two media ids would be reported as duplicates.
    photos = make_photos(tmp_path / "card", EVENTS, deployments=1, seed=31)
    out, log = tmp_path / "out", tmp_path / "worker.log"
    metrics_port = free_port()
    env = worker_env(
        tansu.bootstrap, topic, "g-backpressure", batch_max_records=BATCH_MAX_RECORDS,
        poll_max_records=POLL_MAX_RECORDS, metrics_port=metrics_port,
        s3_access_key_id="bp-access-key", s3_secret_access_key=SECRET,  # must never be echoed
    )  # fmt: skip
    worker = start_worker(env, out, log)
    sent = [0]
    producer = threading.Thread(
        target=_produce, args=(tansu.bootstrap, topic, photos, sent, WARM_UP, EVENTS)
    )
    samples: list[tuple[float, int, int, int]] = []  # (t, rss, sent, written)
    held: list[int] = []
    try:
        _produce(tansu.bootstrap, topic, photos, sent, 0, WARM_UP)
        wait_until(
            lambda: len(read_rows(out, "media")) >= WARM_UP, 60, "the warm-up rows", [worker], log
        )
        producer.start()
        while producer.is_alive():
            written = len(read_rows(out, "media"))
            samples.append((time.monotonic(), rss_bytes(worker.pid), sent[0], written))
            held.append(held_records(metrics_port))
            time.sleep(0.25)
        producer.join()
        wait_until(
            lambda: len(read_rows(out, "media")) >= EVENTS, 120, f"all {EVENTS} rows", [worker], log
        )
        time.sleep(1.0)
    finally:
        stop_workers([worker])

    # The first quarter of the samples against the last: lag keeps growing, the records the
    # worker holds stay under their bound. RSS is reported (the scoreboard) for the record.
    quarter = max(len(samples) // 4, 1)
    early, late = samples[:quarter], samples[-quarter:]
    lag_start = samples[0][2] - samples[0][3]
    lag_early = max(s[2] - s[3] for s in early)
    lag_late = max(s[2] - s[3] for s in late)
    # Medians: a sample taken during a model batch holds its tensors (a 16-photo detector input
    # alone is ~80 MB), so single samples swing by tens of MB.
    rss_early, rss_late = median(s[1] for s in early), median(s[1] for s in late)
    grown_mb = (rss_late - rss_early) / 2**20
    media = read_rows(out, "media")
    ids = [m["media_id"] for m in media]
    expected = {f"bp-{i:05d}" for i in range(EVENTS)}
    score = scoreboard.record(
        _score(
            expected,
            ids,
            len(read_rows(out, "failures")),
            f"lag {lag_start}->{lag_early}->{lag_late}, RSS +{grown_mb:.0f} MB, held <= {max(held)}",
        )
    )
    assert lag_late > lag_start + 200, "the model was not the bottleneck: no back-pressure shown"
    assert lag_late >= lag_early + 100, "too little backlog between the two windows to judge"
    assert max(held) <= HELD_BOUND, f"the worker held {max(held)} records (bound {HELD_BOUND})"
    # RSS is reported above, not asserted: it moved with the machine's load (a busy machine's
    # run failed with +71 MB against a 109 MB backlog, issue 39). What bounds memory is the
    # count of records held, asserted above and in the unit test of the outage.
    assert (score.duplicates, score.losses) == (0, 0)
    assert SECRET not in log.read_text(errors="replace"), (
        "a secret reached the settings echo or logs"
    )


def _score(expected: set[str], ids: list[str], failures: int, note: str):
    from support.harness import Score

    return Score(
        f"back-pressure, slow model: {EVENTS} x {PADDING // 1000} KB",
        len(expected),
        len(ids) + failures,
        len(ids) - len(set(ids)) + failures,
        len(expected - set(ids)),
        note,
    )
