"""The upload API through the real server: `trapline api` (Ray Serve) against Tansu and Ceph RGW.

One server starts per module (Ray and Serve take ~15 s); each test uses its own deployments, so
counts of events and objects are per deployment. Photos are stored in a fresh bucket, the
registry too; the upload topic is fresh.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pyarrow.dataset as ds
import pytest
import requests
from support.photo_factory import jpeg_bytes
from support.servers import TEST_SESSION_TIMEOUT_MS

from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import parse_upload
from trapline.services.adapters import kafka_io, object_store
from trapline.services.api.auth import RateLimiter
from trapline.services.api.multipart import MultipartFiles
from trapline.services.api.registry import Registry
from trapline.services.api.storage import Refused, sniff
from trapline.services.run.stream import StreamWorker
from trapline.services.run.workers import build_pipeline
from trapline.services.settings import Settings

pytest_plugins = ["support.s3_fixtures"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TRAPLINE = Path(sys.executable).parent / "trapline"
MAX_FILE_BYTES = 200_000  # small, so the 413 test needs no large photo
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tansu, ceph_rgw, s3_settings, tmp_path_factory):
    """`trapline api` on a free port, storing in a fresh bucket, announcing on a fresh topic."""
    object_store.configure_fsspec(s3_settings)
    bucket = f"api-{uuid.uuid4().hex[:10]}"
    fsspec.filesystem("s3").mkdir(bucket)
    topic = f"api.{uuid.uuid4().hex[:8]}"
    kafka_io.ensure_topics(tansu.bootstrap, [topic], 2)
    work = tmp_path_factory.mktemp("api")
    port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "TRAPLINE_API_PORT": str(port),
        "TRAPLINE_API_REGISTRY": f"s3://{bucket}/registry",
        "TRAPLINE_API_UPLOAD_PREFIX": f"s3://{bucket}/uploads",
        "TRAPLINE_API_RESULTS": str(work / "results"),
        "TRAPLINE_API_RATE_PER_S": "1000",
        "TRAPLINE_API_RATE_BURST": "1000",
        "TRAPLINE_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
        "TRAPLINE_KAFKA_BOOTSTRAP": tansu.bootstrap,
        "TRAPLINE_UPLOADS_TOPIC": topic,
        "TRAPLINE_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
        "TRAPLINE_S3_REGION": s3_settings.s3_region,
        "TRAPLINE_S3_ACCESS_KEY_ID": s3_settings.s3_access_key_id,
        "TRAPLINE_S3_SECRET_ACCESS_KEY": s3_settings.s3_secret_access_key,
    }
    # The CLI, as an operator runs it: the token is the only line on stdout.
    added = subprocess.run(
        [str(TRAPLINE), "api", "add-program", "alpha"], env=env, capture_output=True, text=True
    )
    assert added.returncode == 0, added.stderr
    alpha = added.stdout.strip()
    beta = Registry(env["TRAPLINE_API_REGISTRY"]).add_program("beta")
    log = open(work / "api.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(TRAPLINE), "api"], env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, work / "api.log")
        yield SimpleNamespace(
            base=base, bucket=bucket, topic=topic, tansu=tansu, env=env, work=work,
            alpha=alpha, beta=beta, s3_settings=s3_settings,
        )  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        object_store.reset_fsspec()


def wait_ready(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"trapline api exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # the proxy may accept before the app is routed
            pass
        time.sleep(0.5)
    pytest.fail(f"trapline api not ready in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_deployment(stack, token: str, deployment_id: str, **fields) -> None:
    body = {"deployment_id": deployment_id, "utc_offset": "+01:00", **fields}
    response = requests.post(f"{stack.base}/v1/deployments", json=body, headers=auth(token))
    assert response.status_code == 201, response.text


def photo(seed: int) -> bytes:
    return jpeg_bytes(
        320, 240, seed=seed, when=datetime(2024, 5, 1, 6, 0) + timedelta(seconds=seed)
    )


def upload(stack, token: str, deployment_id: str, files: list[tuple[str, bytes, str]]):
    parts = [("files", (name, data, content_type)) for name, data, content_type in files]
    url = f"{stack.base}/v1/deployments/{deployment_id}/media"
    return requests.post(url, files=parts, headers=auth(token), timeout=120)


def events_for(stack, deployment_id: str, at_least: int = 10_000, timeout_s: float = 3.0) -> list:
    """The deployment's upload messages on the topic (reads until `at_least` or the timeout)."""
    records = kafka_io.read_topic(stack.tansu.bootstrap, stack.topic, at_least, timeout_s=timeout_s)
    return [r for r in records if r.key == deployment_id.encode()]


def stored_objects(stack, deployment_id: str) -> list[str]:
    """Objects at the deployment's content-addressed names, and any temporary upload left over."""
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    names = fs.find(f"{stack.bucket}/uploads/{deployment_id}")
    return names + fs.find(f"{stack.bucket}/uploads/_incoming")


def test_fifty_photos_uploaded_over_http_become_fifty_events_then_fifty_media_rows(stack):
    create_deployment(stack, stack.alpha, "alpha-cam-1", latitude=46.5, longitude=7.9, country="ch")
    photos = {f"IMG_{i:04d}.JPG": photo(i) for i in range(50)}
    files = [(name, data, "image/jpeg") for name, data in photos.items()]
    answers = [upload(stack, stack.alpha, "alpha-cam-1", files[i : i + 25]) for i in (0, 25)]

    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    stored = [f for a in answers for f in a.json()["files"]]
    expected = {hashlib.sha256(data).hexdigest() for data in photos.values()}
    assert {f["media_id"] for f in stored} == expected
    assert all(f["key"].startswith("alpha-cam-1/") for f in stored)  # no server path shown
    events = events_for(stack, "alpha-cam-1", at_least=50, timeout_s=15)
    parsed = [parse_upload(r.value).events[0] for r in events]
    assert len(parsed) == 50
    assert {e.ref.media_id for e in parsed} == expected
    assert {e.attributes["original_name"] for e in parsed} == set(photos)

    again = upload(stack, stack.alpha, "alpha-cam-1", files[:1])  # idempotent: same id, no copy
    assert again.status_code == 201 and again.json()["files"][0]["already_present"] is True
    assert len(stored_objects(stack, "alpha-cam-1")) == 50

    settings = Settings(
        kafka_bootstrap=stack.tansu.bootstrap, uploads_topic=stack.topic,
        dlq_topic=f"{stack.topic}.dlq", consumer_group="api-test", workers=0,
        session_timeout_ms=TEST_SESSION_TIMEOUT_MS, batch_max_records=25, commit_interval_s=0.5,
        deployments_file=f"s3://{stack.bucket}/registry/deployments",
        s3_endpoint_url=stack.s3_settings.s3_endpoint_url, s3_region=stack.s3_settings.s3_region,
        s3_access_key_id=stack.s3_settings.s3_access_key_id,
        s3_secret_access_key=stack.s3_settings.s3_secret_access_key,
    )  # fmt: skip
    results = stack.env["TRAPLINE_API_RESULTS"]
    StreamWorker(settings, results, build_pipeline(settings)).run(idle_exit_s=6)

    where = ds.field("deployment_id") == "alpha-cam-1"
    media = read_table(results, "media", ["media_id"], filter=where)
    assert sorted(media.column("media_id").to_pylist()) == sorted(expected)
    status = requests.get(
        f"{stack.base}/v1/deployments/alpha-cam-1/status", headers=auth(stack.alpha)
    ).json()
    assert status == {
        "deployment_id": "alpha-cam-1", "received": 50, "processed": 50, "failed": 0,
        "pending": 0, "failure_kinds": {},
    }  # fmt: skip


def test_a_wrong_or_missing_token_gets_401_and_leaves_nothing_behind(stack):
    create_deployment(stack, stack.alpha, "alpha-cam-2")
    files = [("IMG_0001.JPG", photo(101), "image/jpeg")]
    for token in ("alpha.not-the-token", "beta" + stack.alpha[5:], "garbage", ""):
        answer = upload(stack, token, "alpha-cam-2", files)
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in answer.json()["detail"]
    no_header = requests.get(f"{stack.base}/v1/deployments")
    assert no_header.status_code == 401
    assert stored_objects(stack, "alpha-cam-2") == []
    assert events_for(stack, "alpha-cam-2") == []


def test_another_programs_deployment_is_404_and_lists_are_per_program(stack):
    create_deployment(stack, stack.alpha, "alpha-cam-3", location_name="Ridge")
    create_deployment(stack, stack.beta, "beta-cam-1")
    base, beta = stack.base, auth(stack.beta)
    for answer in (
        requests.get(f"{base}/v1/deployments/alpha-cam-3", headers=beta),
        requests.get(f"{base}/v1/deployments/alpha-cam-3/status", headers=beta),
        upload(stack, stack.beta, "alpha-cam-3", [("a.jpg", photo(201), "image/jpeg")]),
        requests.post(
            f"{base}/v1/deployments/alpha-cam-3/presigned-uploads", json={"count": 1}, headers=beta
        ),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["detail"] == "no deployment 'alpha-cam-3' in program 'beta'"
    listed = requests.get(f"{base}/v1/deployments", headers=beta).json()
    assert [d["deployment_id"] for d in listed] == ["beta-cam-1"]
    taken = requests.post(
        f"{base}/v1/deployments", json={"deployment_id": "alpha-cam-3"}, headers=beta
    )
    assert taken.status_code == 409  # ids are global: the tables are partitioned by them
    assert stored_objects(stack, "alpha-cam-3") == []
    mine = requests.get(f"{base}/v1/deployments/alpha-cam-3", headers=auth(stack.alpha)).json()
    assert mine["location_name"] == "Ridge" and mine["utc_offset"] == "+01:00"


def test_an_oversized_or_non_image_upload_gets_413_or_415_and_leaves_nothing_behind(stack):
    create_deployment(stack, stack.alpha, "alpha-cam-4")
    good = ("IMG_0001.JPG", photo(301), "image/jpeg")
    big = ("IMG_0002.JPG", photo(302) + os.urandom(MAX_FILE_BYTES), "image/jpeg")
    text = ("IMG_0003.JPG", b"these are not the bytes of a photo" * 10, "image/jpeg")
    html = ("notes.png", b"<html><script>alert(1)</script></html>", "image/png")

    too_big = upload(stack, stack.alpha, "alpha-cam-4", [good, big])
    assert too_big.status_code == 413
    assert too_big.json()["detail"] == (
        f"file 2 ('IMG_0002.JPG'): larger than the {MAX_FILE_BYTES:,} bytes allowed per file"
    )
    for bad in (text, html):
        answer = upload(stack, stack.alpha, "alpha-cam-4", [good, bad])
        assert answer.status_code == 415, answer.text
        assert f"file 2 ({bad[0]!r}): not a JPEG, PNG" in answer.json()["detail"]
    # All or nothing: the good photo sent with each bad one is not kept either.
    assert stored_objects(stack, "alpha-cam-4") == []
    assert events_for(stack, "alpha-cam-4") == []


def test_file_names_never_become_storage_paths(stack):
    create_deployment(stack, stack.alpha, "alpha-cam-5")
    data = photo(401)
    answer = upload(
        stack, stack.alpha, "alpha-cam-5", [("../../registry/programs/x.json", data, "text/plain")]
    )
    assert answer.status_code == 201, answer.text
    (stored,) = answer.json()["files"]
    sha = hashlib.sha256(data).hexdigest()
    assert stored["key"] == f"alpha-cam-5/{sha}.jpg"
    assert fsspec.filesystem("s3").exists(f"{stack.bucket}/uploads/alpha-cam-5/{sha}.jpg")
    assert stored["original_name"] == "../../registry/programs/x.json"  # kept as an attribute only
    assert not fsspec.filesystem("s3").exists(f"{stack.bucket}/registry/programs/x.json")


def test_presigned_batch_is_checked_at_completion_and_only_good_files_are_announced(stack):
    create_deployment(stack, stack.alpha, "alpha-cam-6")
    granted = requests.post(
        f"{stack.base}/v1/deployments/alpha-cam-6/presigned-uploads",
        json={"count": 4}, headers=auth(stack.alpha),
    )  # fmt: skip
    assert granted.status_code == 201, granted.text
    urls = granted.json()["uploads"]
    bodies = [photo(501), photo(502), b"plain text, not a photo at all"]
    for item, body in zip(urls, bodies):  # the 4th URL is never used
        assert requests.put(item["url"], data=body, timeout=30).status_code == 200
    done = requests.post(
        f"{stack.base}/v1/deployments/alpha-cam-6/presigned-uploads/complete",
        json={"upload_ids": [u["upload_id"] for u in urls]}, headers=auth(stack.alpha),
    )  # fmt: skip
    assert done.status_code == 200, done.text
    result = done.json()
    expected = sorted(hashlib.sha256(b).hexdigest() for b in bodies[:2])
    assert sorted(f["media_id"] for f in result["accepted"]) == expected
    assert sorted(r["status"] for r in result["refused"]) == [404, 415]
    events = events_for(stack, "alpha-cam-6", at_least=2, timeout_s=10)
    assert sorted(parse_upload(r.value).events[0].ref.media_id for r in events) == expected
    assert len(stored_objects(stack, "alpha-cam-6")) == 2  # the refused one was deleted


def test_rate_limit_and_the_openapi_spec_lists_every_endpoint(stack):
    spec = requests.get(f"{stack.base}/openapi.json").json()
    assert set(spec["paths"]) == {
        "/v1/deployments", "/v1/deployments/{deployment_id}",
        "/v1/deployments/{deployment_id}/media", "/v1/deployments/{deployment_id}/status",
        "/v1/deployments/{deployment_id}/presigned-uploads",
        "/v1/deployments/{deployment_id}/presigned-uploads/complete",
    }  # fmt: skip
    media = spec["paths"]["/v1/deployments/{deployment_id}/media"]["post"]
    assert "multipart/form-data" in media["requestBody"]["content"]
    assert {"401", "404", "413", "415", "429"} <= set(media["responses"])


def raw_post(stack, path: str, head: str, body: bytes) -> bytes:
    """Send the request line, headers and `body` only (the rest of a declared body never
    comes), then read what the server answers: it must not wait for the rest."""
    host, port = stack.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + body)
        answer = b""
        while not answer.endswith(b"}"):  # the JSON problem closes the answer
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_huge_body_without_a_token_is_413_through_ray_serve_before_it_is_sent(stack):
    """Through the real proxy: a 300 MB Content-Length, and a chunked body past 1 MB, are
    answered 413 while the client still holds almost all of the body."""
    declared = raw_post(
        stack, "/v1/deployments",
        "Content-Type: application/json\r\nContent-Length: 300000000\r\n", b"{" * 1000,
    )  # fmt: skip
    assert declared.startswith(b"HTTP/1.1 413"), declared[:300]
    chunk = b"0" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(24))  # 1.5 MB
    streamed = raw_post(
        stack, "/v1/deployments",
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", chunked,
    )  # fmt: skip
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:300]
    assert b"1,000,000 bytes" in streamed


def test_schemathesis_finds_no_server_error(stack):
    """Property-based requests from the OpenAPI spec, bounded, with a valid token."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{stack.base}/openapi.json")
    headers = auth(stack.alpha)
    errors: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=12, deadline=None, database=None, derandomize=True,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=operation.as_strategy())
        def call(case) -> None:
            response = case.call(headers=headers, timeout=60)
            if response.status_code >= 500:
                errors.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
                )

        call()
    assert operations == 7
    assert errors == [], "\n".join(errors)


def test_the_readme_curl_upload_works_as_written(stack):
    """The README's curl commands, each run by bash against this stack (its address for :8000)."""
    commands = [c for c in readme_commands() if c.startswith("curl")]
    assert len(commands) >= 3, commands
    answers = []
    for command in commands:
        ran = subprocess.run(
            ["bash", "-c", command.replace("http://127.0.0.1:8000", stack.base)],
            cwd=ROOT, env={**os.environ, "TOKEN": stack.alpha},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ran.returncode == 0, f"{command}\n{ran.stderr}{ran.stdout}"
        answers.append(json.loads(ran.stdout))
    created, uploaded, status = answers[0], answers[1], answers[-1]
    assert created["deployment_id"] == "demo-cam-1"
    assert len(uploaded["files"]) == 2
    events = events_for(stack, "demo-cam-1", at_least=2, timeout_s=10)
    assert len(events) == 2
    assert status["received"] == 2


def readme_commands() -> list[str]:
    """The README's api-quickstart block as commands (backslash continuations joined)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-quickstart -->\s*```bash\n(.*?)```", text, re.S)
    assert match, "README.md has no api-quickstart block"
    return [c.strip() for c in match.group(1).replace("\\\n", " ").splitlines() if c.strip()]


# -- units without servers: the pieces the server tests rely on ----------------------------------


def test_rate_limiter_allows_a_burst_then_refills_at_the_rate():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("t") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("t") == pytest.approx(0.5)  # empty: one token every 0.5 s
    assert limiter.take("other") == 0.0  # buckets are per token
    now[0] += 0.5
    assert limiter.take("t") == 0.0


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", ".jpg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", ".png"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00", ".mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00", ".mov"),
        (b"RIFF\x00\x10\x00\x00AVI LIST", ".avi"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00", None),
        (b"<?xml version=", None),
        (b"\xff\xd8", None),  # too short to be a JPEG
    ],
)
def test_types_are_sniffed_from_the_first_bytes(head, expected):
    found = sniff(head)
    assert (found[1] if found else None) == expected


def test_a_truncated_or_foreign_multipart_body_is_refused_with_a_reason():
    opened: list[str] = []
    form = MultipartFiles(
        "multipart/form-data; boundary=XyZ", lambda name: opened.append(name) or io.BytesIO(), 5
    )
    form.feed(b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\nabc')
    with pytest.raises(Refused, match="before its closing boundary") as refused:
        form.finish()
    assert refused.value.status == 400 and opened == ["a.jpg"]
    other = MultipartFiles("multipart/form-data; boundary=XyZ", lambda name: io.BytesIO(), 5)
    with pytest.raises(Refused, match="unexpected form field 'path'"):
        other.feed(
            b'--XyZ\r\nContent-Disposition: form-data; name="path"\r\n\r\n/etc\r\n--XyZ--\r\n'
        )
    with pytest.raises(Refused) as not_multipart:
        MultipartFiles("application/json", lambda name: io.BytesIO(), 5)
    assert not_multipart.value.status == 415


def test_tokens_are_stored_hashed_and_only_the_exact_token_authenticates(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    token = registry.add_program("north")
    stored = (tmp_path / "registry" / "programs" / "north.json").read_text()
    assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored
    assert registry.authenticate(token) == "north"
    for wrong in (
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        "north.",
        "south." + token[6:],
        "",
    ):
        assert registry.authenticate(wrong) is None
    rotated = registry.add_token("north")
    assert registry.authenticate(rotated) == registry.authenticate(token) == "north"


# --------------------------------------------------------------------------------------------
# Presigned uploads keep the bytes they checked; deployment ids register atomically


def test_a_put_after_complete_cannot_change_what_was_checked(stack):
    create_deployment(stack, stack.alpha, "alpha-cam-p1")
    base = f"{stack.base}/v1/deployments/alpha-cam-p1/presigned-uploads"
    granted = requests.post(base, json={"count": 1}, headers=auth(stack.alpha)).json()
    (item,) = granted["uploads"]
    checked, other = photo(601), photo(602)
    assert requests.put(item["url"], data=checked, timeout=30).status_code == 200
    ids = {"upload_ids": [item["upload_id"]]}
    first = requests.post(f"{base}/complete", json=ids, headers=auth(stack.alpha)).json()
    (accepted,) = first["accepted"]
    assert accepted["sha256"] == hashlib.sha256(checked).hexdigest()

    # The URL is still valid (S3 cannot revoke it), so the PUT lands, but on nothing kept.
    assert requests.put(item["url"], data=other, timeout=30).status_code == 200
    again = requests.post(f"{base}/complete", json=ids, headers=auth(stack.alpha)).json()
    assert again["accepted"] == [] and [r["status"] for r in again["refused"]] == [409]
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert fs.cat(f"{stack.bucket}/uploads/{accepted['key']}") == checked
    kept = fs.find(f"{stack.bucket}/uploads/alpha-cam-p1")
    assert [name.rsplit("/", 1)[1].split(".")[0] for name in kept] == [accepted["sha256"]]
    events = events_for(stack, "alpha-cam-p1", at_least=2, timeout_s=5)
    assert [parse_upload(r.value).events[0].ref.media_id for r in events] == [accepted["sha256"]]


def test_the_bytes_kept_are_the_bytes_checked_while_puts_race_the_completion(stack):
    """A client keeps PUTting other bytes to its URL while `complete` runs: whatever was
    stored must hash to its name (the check reads a private copy, which is what is kept)."""
    import threading

    from trapline.services.api.presigned import complete_presigned, presigned_path
    from trapline.services.api.storage import MediaStore

    store = MediaStore(f"s3://{stack.bucket}/race")
    bodies = [b"\xff\xd8\xff\xe0" + os.urandom(3_000_000) for _ in range(2)]  # JPEG by its head
    for attempt in range(4):
        upload_id = uuid.uuid4().hex
        url = store.presign_put(presigned_path(store, "race-cam", upload_id), 300)
        assert requests.put(url, data=bodies[0], timeout=60).status_code == 200
        stop = threading.Event()

        def keep_putting(url=url, stop=stop) -> None:
            i = 1
            while not stop.is_set():
                requests.put(url, data=bodies[i % 2], timeout=60)
                i += 1

        racer = threading.Thread(target=keep_putting)
        racer.start()
        try:
            stored = complete_presigned(store, "race-cam", upload_id, 10_000_000)
        finally:
            stop.set()
            racer.join()
        kept = fsspec.filesystem("s3").cat(stored.uri)
        assert hashlib.sha256(kept).hexdigest() == stored.sha256, attempt
        assert stored.sha256 in {hashlib.sha256(b).hexdigest() for b in bodies}


def test_two_programs_racing_for_one_deployment_id_exactly_one_wins(stack):
    """Over HTTP, alpha and beta ask for the same new id at the same moment, ten times."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    barrier = Barrier(2)

    def create(token: str, deployment_id: str) -> int:
        body = {"deployment_id": deployment_id, "utc_offset": "+01:00"}
        barrier.wait()
        return requests.post(
            f"{stack.base}/v1/deployments", json=body, headers=auth(token), timeout=30
        ).status_code

    with ThreadPoolExecutor(2) as pool:
        for round_ in range(10):
            deployment_id = f"race-{round_}-{uuid.uuid4().hex[:6]}"
            answers = list(pool.map(create, (stack.alpha, stack.beta), [deployment_id] * 2))
            assert sorted(answers) == [201, 409], (deployment_id, answers)
            winner = (stack.alpha, stack.beta)[answers.index(201)]
            loser = (stack.alpha, stack.beta)[answers.index(409)]
            listed = requests.get(f"{stack.base}/v1/deployments", headers=auth(winner)).json()
            assert deployment_id in [d["deployment_id"] for d in listed]
            listed = requests.get(f"{stack.base}/v1/deployments", headers=auth(loser)).json()
            assert deployment_id not in [d["deployment_id"] for d in listed]


@pytest.mark.parametrize("where", ["s3", "local"])
def test_registries_racing_on_one_storage_let_exactly_one_program_have_an_id(
    where, stack, tmp_path
):
    """Eight registry clients (eight replicas or CLIs) register one id at once, twenty times:
    one winner each time, and the registry holds exactly its record."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from trapline.pipelines.deployments import Deployment
    from trapline.services.api.registry import Conflict

    root = f"s3://{stack.bucket}/race-registry" if where == "s3" else str(tmp_path / "registry")
    clients = [Registry(root) for _ in range(8)]
    barrier = Barrier(len(clients))

    def create(index: int, deployment_id: str) -> bool:
        barrier.wait()
        try:
            clients[index].create_deployment(f"program-{index}", Deployment(deployment_id))
        except Conflict:
            return False
        return True

    with ThreadPoolExecutor(len(clients)) as pool:
        for round_ in range(20):
            deployment_id = f"cam-{round_}"
            won = list(pool.map(create, range(len(clients)), [deployment_id] * len(clients)))
            assert won.count(True) == 1, (deployment_id, won)
            holders = [i for i, c in enumerate(clients)
                       if c.deployment(f"program-{i}", deployment_id) is not None]  # fmt: skip
            assert holders == [won.index(True)]
