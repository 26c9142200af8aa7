"""URI safety: an upload message cannot make a worker read outside the configured storage roots,
climb out with `..` or a symlink, or fetch internal http(s) addresses. Refusals are failures
rows (kind `forbidden_uri`) with a reason, and dead letters in service mode."""

from __future__ import annotations

import shutil

import pytest
from support.harness import REPO, account, read_rows
from support.servers import TEST_SESSION_TIMEOUT_MS

from trapline.pipelines import uri_safety
from trapline.pipelines.source import read_bytes
from trapline.pipelines.types import StageError
from trapline.pipelines.uploads import Upload, encode_upload
from trapline.pipelines.uri_safety import check_uri, configure_storage_roots
from trapline.services.adapters import kafka_io
from trapline.services.run.stream import StreamWorker
from trapline.services.run.workers import build_pipeline
from trapline.services.settings import Settings

SAMPLE = REPO / "examples" / "photos" / "deployment-b"


@pytest.fixture(autouse=True)
def _no_roots_left_behind():
    yield
    configure_storage_roots(())


@pytest.mark.parametrize(
    ("uri", "roots", "reason"),
    [
        ("file:///data/cards/../../etc/shadow", (), "'..' path segment"),
        ("file:///data/cards/%2E%2E/%2e%2e/etc/shadow", (), "'..' path segment"),
        ("file://fileserver/share/a.jpg", (), "must be absolute"),
        (
            "http://169.254.169.254/latest/meta-data/iam/x.jpg",
            ("http://169.254.169.254/",),
            "link-local",
        ),
        ("http://127.0.0.1:8080/a.jpg", ("http://127.0.0.1:8080/",), "loopback"),
        ("http://localhost/a.jpg", ("http://localhost/",), "loopback"),
        ("https://10.0.0.7/a.jpg", ("https://10.0.0.7/",), "private"),
        ("http://[::1]/a.jpg", ("http://[::1]/",), "loopback"),
        ("https://example.org/a.jpg", (), "only below a configured storage root"),
        ("ftp://example.org/a.jpg", (), "not a storage protocol"),
        ("file:///etc/passwd", ("/data/cards",), "outside the configured storage roots"),
        ("s3://someone-elses-bucket/a.jpg", ("s3://camtraps/",), "outside the configured"),
        ("s3://camtraps/uploads-old/a.jpg", ("s3://camtraps/uploads",), "outside the configured"),
    ],
)
def test_unsafe_uris_are_refused_with_the_reason(uri, roots, reason):
    with pytest.raises(StageError) as refused:
        check_uri(uri, roots)
    assert refused.value.kind == "forbidden_uri"
    assert reason in str(refused.value) and uri[:30] in str(refused.value)


@pytest.mark.parametrize(
    ("uri", "roots"),
    [
        ("file:///data/cards/cam-1/IMG_0001.JPG", ()),  # the laptop default: local files
        ("/data/cards/cam-1/IMG_0001.JPG", ()),  # how a folder run lists them
        ("s3://any-bucket/cam-1/IMG_0001.JPG", ()),
        ("s3://camtraps/uploads/cam-1/a.jpg", ("s3://camtraps/uploads/",)),
        ("s3a://camtraps/uploads/cam-1/a.jpg", ("s3://camtraps/uploads",)),  # same store
        ("file:///data/cards/cam-1/a.jpg", ("/data/cards", "s3://camtraps/")),
        ("s3://camtraps/x.jpg", ("s3://camtraps",)),  # a whole bucket
    ],
)
def test_uris_below_a_root_are_readable(uri, roots):
    check_uri(uri, roots)


def test_a_symlink_inside_a_root_cannot_point_out_of_it(tmp_path):
    root = tmp_path / "cards"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8\xff not for you")
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(StageError, match="outside the configured storage roots"):
        read_bytes((root / "link.jpg").as_uri(), 1000, roots=[str(root)])


@pytest.mark.parametrize(
    "suffix", ["x#/../../../secret.txt", "x?/../../../secret.txt", "x.jpg::simplecache"]
)
def test_a_uri_the_check_and_the_open_would_read_differently_is_refused(tmp_path, suffix):
    """`urlsplit` ends the path at '#' or '?', fsspec opens the whole string: with a folder
    `x#` below the root, `file://ROOT/uploads/cam-01/x#/../../../secret.txt` was read."""
    uploads = tmp_path / "root" / "uploads" / "cam-01"
    (uploads / suffix.split("/")[0]).mkdir(parents=True)
    (tmp_path / "root" / "secret.txt").write_text("not for you")
    uri = f"file://{uploads}/{suffix}"
    with pytest.raises(StageError, match="read differently by the check and the open"):
        read_bytes(uri, 1000, roots=[str(tmp_path / "root" / "uploads")])


def test_a_local_path_may_hold_hash_and_question_marks(tmp_path):
    photo = tmp_path / "IMG#0001?.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    assert read_bytes(str(photo), 1000, roots=[str(tmp_path)]) == b"\xff\xd8\xff"


def test_an_unsafe_root_is_refused_at_configuration_not_per_photo():
    with pytest.raises(StageError, match="'..'"):
        configure_storage_roots(["/data/../"])
    assert uri_safety.storage_roots() == ()


def test_storage_roots_come_from_the_environment_as_a_json_list(monkeypatch):
    monkeypatch.setenv("TRAPLINE_STORAGE_ROOTS", '["s3://camtraps/uploads/", "/data/cards"]')
    assert Settings().storage_roots == ["s3://camtraps/uploads/", "/data/cards"]


def test_worker_refuses_events_outside_its_roots_and_dead_letters_them(
    tansu, kafka_topic, tmp_path, scoreboard
):
    """In service mode, with the card folder as the only root: a photo in it is processed;
    /etc, a traversal, a symlink out, another bucket and a metadata URL each get a failures
    row and a dead letter, and none is read."""
    card = tmp_path / "card" / "cam-b"
    shutil.copytree(SAMPLE, card)
    photo = sorted(p for p in card.glob("*.jpg") if p.name != "corrupt.jpg")[0]
    (tmp_path / "outside.jpg").write_bytes(photo.read_bytes())
    (card / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    hostile = [
        "file:///etc/hostname.jpg",  # a photo name: other names are refused at parse time
        f"file://{card}/../../outside.jpg",
        (card / "escape.jpg").as_uri(),
        "s3://not-our-bucket/cam-b/a.jpg",
    ]
    topic = kafka_topic("uri-safety", partitions=1)
    producer = kafka_io.make_producer(tansu.bootstrap)
    values = [
        encode_upload(Upload(uri=u, deployment_id="cam-b"))
        for u in [photo.as_uri(), *hostile]
    ]
    kafka_io.wait_delivered([producer.send(topic, key=b"cam-b", value=v) for v in values])
    producer.close()

    settings = Settings(
        kafka_bootstrap=tansu.bootstrap, uploads_topic=topic, dlq_topic=f"{topic}.dlq",
        consumer_group="g-uri-safety", session_timeout_ms=TEST_SESSION_TIMEOUT_MS,
        batch_max_records=50, commit_interval_s=0.5, workers=0, metrics_port=0,
        storage_roots=[str(tmp_path / "card")],
    )  # fmt: skip
    StreamWorker(settings, str(tmp_path / "out"), build_pipeline(settings)).run(idle_exit_s=4)

    media, failures = read_rows(tmp_path / "out", "media"), read_rows(tmp_path / "out", "failures")
    assert [m["uri"] for m in media] == [photo.as_uri()]
    refused = {f["uri"]: f for f in failures}
    assert set(refused) == set(hostile)
    assert {(f["stage"], f["kind"]) for f in failures} == {("read", "forbidden_uri")}
    dlq = kafka_io.read_topic(tansu.bootstrap, f"{topic}.dlq", len(hostile), timeout_s=10)
    assert {kafka_io.DeadLetterRecord.from_record(r).kind for r in dlq} == {"forbidden_uri"}
    assert len(dlq) == len(hostile)
    score = account(
        "URI safety: hostile URIs in events", [photo.as_uri(), *hostile], tmp_path / "out"
    )
    scoreboard.record(score)
    assert (score.duplicates, score.losses) == (0, 0)
