"""The streaming promise at scale and under kill -9, with workers as separate processes.

Workers are real `python -m trapline serve --workers 0` processes against the real broker;
photos are small generated JPEGs so a thousand events take seconds.
"""

from __future__ import annotations

from support.stream_workers import (
    make_photos,
    send,
    start_worker,
    stop,
    table_rows,
    wait_for_rows,
)

from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.adapters import kafka_io
from trapline.services.tools.submit import submit_folder


def test_a_thousand_events_with_bad_ones_end_exactly_once_with_two_workers(
    tansu, kafka_topic, tmp_path
):
    topic = kafka_topic("uploads", partitions=4)
    photos = make_photos(tmp_path / "card", 955, deployments=8)
    corrupt = photos[:5]
    for path in corrupt:
        path.write_bytes(path.read_bytes()[:200])
    good = photos[5:]
    assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 955
    extra = [
        (b"dep-1", b'{"schema": "trapline.upload/1", "media_id": ' + str(i).encode())
        for i in range(20)
    ]
    extra += [
        (
            b"dep-0",
            encode_upload(
                Upload(uri=(tmp_path / f"gone-{i}.jpg").as_uri(), deployment_id="dep-0")
            ),
        )
        for i in range(5)
    ]
    extra += [
        (
            p.parent.name.encode(),
            encode_upload(Upload(uri=p.as_uri(), deployment_id=p.parent.name)),
        )
        for p in good[:20]
    ]
    send(tansu, topic, extra)

    out = tmp_path / "out"
    workers = [start_worker(tansu, topic, "g-thousand", out) for _ in range(2)]
    try:
        wait_for_rows(out, 1000, timeout_s=180, workers=workers)
    finally:
        stop(workers)

    media, failures = table_rows(out, "media"), table_rows(out, "failures")
    assert len(media) == 950
    assert {m["uri"].removeprefix("file://") for m in media} == {str(p) for p in good}
    assert len({m["media_id"] for m in media}) == 950
    kinds = sorted(f["kind"] for f in failures)
    assert kinds.count("malformed_json") == 20 and kinds.count("duplicate") == 20
    assert kinds.count("missing") == 5 and len(failures) == 50
    dlq = kafka_io.read_topic(tansu.bootstrap, f"{topic}.dlq", 50, timeout_s=20)
    assert len(dlq) == 50


# kill -9 at random points: tests/reliability/test_exactly_once_delta.py (two workers, a reader
# polling the tables, compaction, local disk and Ceph S3).
