"""Issue 37, items 1, 4 and 8: the upload API in-process, against tables the project wrote.

No servers: the FastAPI app is driven through ASGI directly (so a test can count the body bytes
the app pulled, and say which client address a request comes from), the registry and uploads
are local folders, and the Kafka producer is the in-memory one. The results are written by the
project's own writers (`write_review_results`: assemble + `folder.write_tables`), as a folder
run would, with no registry involved.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.memory_kafka import MemoryLog, MemoryProducer
from support.photo_factory import jpeg_bytes
from support.review_fixtures import write_review_results

from trapline.pipelines.deployments import Deployment
from trapline.pipelines.readers import read_table
from trapline.services.api.app import build_app
from trapline.services.api.limits import ApiLimits
from trapline.services.api.registry import Conflict, Registry
from trapline.services.settings import Settings
from trapline.services.tools.review import POST_HEADER

TRAPLINE = Path(sys.executable).parent / "trapline"
CHUNK = 64 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    consumed: int  # request body bytes the app pulled from the server

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace") + json.dumps(self.headers)


def call(
    app,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body=None,
    chunks: Iterable[bytes] = (),
    headers: dict[str, str] | None = None,
    client: str = "198.51.100.7",
    query: str = "",
) -> Answer:
    """One request through the app's ASGI interface; the body is pulled chunk by chunk."""
    sent = dict(headers or {})
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    if json_body is not None:
        data = json.dumps(json_body).encode()
        chunks = [data]
        sent.setdefault("content-type", "application/json")
        sent.setdefault("content-length", str(len(data)))
    pending = iter(chunks)
    consumed = 0
    answer: dict = {"headers": {}, "body": b""}

    async def receive() -> dict:
        nonlocal consumed
        chunk = next(pending, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": query.encode(), "client": (client, 40000), "server": ("api", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in sent.items()],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return Answer(answer["status"], answer["headers"], answer["body"], consumed)


def zeros(total: int) -> Iterable[bytes]:
    """A body of `total` bytes made as it is pulled (300 MB never exist at once)."""
    block = b"0" * CHUNK
    for _ in range(total // CHUNK):
        yield block


def multipart(files: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    return parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Results for cam-01..cam-05 written as a folder run writes them: no registry knows them."""
    base = tmp_path_factory.mktemp("api-security")
    results, _plan = write_review_results(base, events=10)
    return base, results


@pytest.fixture
def api(written, tmp_path):
    base, results = written
    settings = Settings(
        api_registry=str(tmp_path / "registry"),
        api_upload_prefix=str(tmp_path / "uploads"),
        api_results=str(results),
        api_max_request_bytes=5_000_000,
        max_file_bytes=2_000_000,
    )
    now = [1000.0]
    limits = ApiLimits(
        upload_body_bytes=settings.api_max_request_bytes, failed_auth_burst=3,
        failed_auth_per_s=1 / 60,
    )  # fmt: skip
    app = build_app(settings, limits, clock=lambda: now[0])
    kafka = MemoryLog()
    app.state.api._producer = MemoryProducer(kafka)
    registry = Registry(settings.api_registry)
    alpha, beta = registry.add_program("alpha"), registry.add_program("beta")
    return SimpleNamespace(
        app=app, settings=settings, registry=registry, alpha=alpha, beta=beta, now=now,
        kafka=kafka, tmp=tmp_path, base=base, results=str(results),
    )  # fmt: skip


def event_of(results: str, deployment_id: str) -> str:
    rows = read_table(results, "events", ["event_id", "deployment_id"]).to_pylist()
    return next(r["event_id"] for r in rows if r["deployment_id"] == deployment_id)


# -- item 1: ids with data belong to the program an operator names -----------------------------


def test_an_id_with_results_cannot_be_claimed_until_an_operator_assigns_it(api):
    app = api.app
    claimed = call(app, "POST", "/v1/deployments", token=api.beta,
                   json_body={"deployment_id": "cam-01", "utc_offset": "-05:00"})  # fmt: skip
    assert claimed.status == 409, claimed.body
    assert "an operator assigns it" in claimed.json()["detail"]
    assert "trapline api assign-deployment" in claimed.json()["detail"]
    assert api.registry.holder("cam-01") is None  # nothing was written for the refused claim
    for path in ("/v1/deployments/cam-01", "/v1/deployments/cam-01/status"):
        assert call(app, "GET", path, token=api.beta).status == 404
    # An id nobody wrote is still a program's to take.
    fresh = call(app, "POST", "/v1/deployments", token=api.beta,
                 json_body={"deployment_id": "beta-cam-1"})  # fmt: skip
    assert fresh.status == 201, fresh.body

    # The operator command, as an operator runs it.
    env = {**os.environ, "TRAPLINE_API_REGISTRY": api.settings.api_registry}
    ran = subprocess.run(
        [str(TRAPLINE), "api", "assign-deployment", "cam-01", "--program", "alpha",
         "--utc-offset", "+01:00"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert api.registry.holder("cam-01") == "alpha"

    mine = call(app, "GET", "/v1/deployments/cam-01", token=api.alpha)
    assert mine.status == 200 and mine.json()["utc_offset"] == "+01:00"
    page = call(app, "GET", "/v1/review/api/events", token=api.alpha, query="limit=50").json()
    assert {e["deployment_id"] for e in page["events"]} == {"cam-01"}
    theirs = event_of(api.results, "cam-01")
    assert call(app, "GET", f"/v1/review/api/events/{theirs}", token=api.alpha).status == 200

    # Everyone else: 404 to read, 404 to review, 404 to upload, 409 to claim.
    beta = api.beta
    assert call(app, "GET", "/v1/deployments/cam-01", token=beta).status == 404
    assert call(app, "GET", f"/v1/review/api/events/{theirs}", token=beta).status == 404
    review = call(app, "POST", "/v1/review/api/reviews", token=beta, headers={POST_HEADER: "1"},
                  json_body={"event_id": theirs, "label": "wolf"})  # fmt: skip
    assert review.status == 404
    body, kind = multipart([("a.jpg", jpeg_bytes(64, 48, seed=1))])
    upload = call(app, "POST", "/v1/deployments/cam-01/media", token=beta, chunks=[body],
                  headers={"content-type": kind})  # fmt: skip
    assert upload.status == 404
    again = call(app, "POST", "/v1/deployments", token=beta, json_body={"deployment_id": "cam-01"})
    assert again.status == 409 and "taken" in again.json()["detail"]
    assert api.kafka.sent == []


def test_an_id_with_uploaded_files_but_no_results_is_not_claimable_either(api):
    """`trapline submit --copy-to` puts photos under the upload prefix before any result."""
    folder = api.tmp / "uploads" / "copied-cam"
    folder.mkdir(parents=True)
    (folder / f"{hashlib.sha256(b'x').hexdigest()}.jpg").write_bytes(jpeg_bytes(32, 24, seed=2))
    claimed = call(app := api.app, "POST", "/v1/deployments", token=api.alpha,
                   json_body={"deployment_id": "copied-cam"})  # fmt: skip
    assert claimed.status == 409 and "operator" in claimed.json()["detail"]
    assert call(app, "GET", "/v1/deployments/copied-cam/status", token=api.alpha).status == 404


def test_an_operator_moves_an_id_from_a_program_only_when_told_which(tmp_path):
    """Ids claimed before this rule (a squatter's) are moved by naming their holder."""
    registry = Registry(str(tmp_path / "registry"))
    registry.add_program("alpha"), registry.add_program("squatter")
    registry.create_deployment("squatter", Deployment("cam-09", utc_offset="+09:00"))
    with pytest.raises(Conflict, match="held by program 'squatter'; .* --take-from squatter"):
        registry.assign_deployment("alpha", Deployment("cam-09"))
    registry.assign_deployment("alpha", Deployment("cam-09", utc_offset="+01:00"),
                               take_from="squatter")  # fmt: skip
    assert registry.holder("cam-09") == "alpha"
    assert registry.deployment("squatter", "cam-09") is None
    assert registry.deployment("alpha", "cam-09").utc_offset == "+01:00"
    registry.assign_deployment("alpha", Deployment("cam-09", utc_offset="+02:00"))  # an update
    assert registry.deployment("alpha", "cam-09").utc_offset == "+02:00"


# -- item 4: body caps before parsing and before auth; wrong tokens slowed per address --------

EVERY_BODY_ROUTE = [
    "/v1/deployments",
    "/v1/deployments/cam-01/presigned-uploads",
    "/v1/deployments/cam-01/presigned-uploads/complete",
    "/v1/review/api/reviews",
]


@pytest.mark.parametrize("path", EVERY_BODY_ROUTE)
def test_a_300_mb_body_without_a_token_is_413_and_never_buffered(api, path):
    total = 300_000_000
    cap = api.app.state.api.limits.json_body_bytes
    # Chunked (no Content-Length): counted as it streams, stopped at the first chunk past the cap.
    streamed = call(api.app, "POST", path, chunks=zeros(total),
                    headers={"content-type": "application/json"})  # fmt: skip
    assert streamed.status == 413, streamed.body
    assert "1,000,000 bytes" in streamed.json()["detail"]
    assert cap < streamed.consumed <= cap + CHUNK
    # Declared: refused from the header alone, not one byte read.
    declared = call(api.app, "POST", path, chunks=zeros(total),
                    headers={"content-type": "application/json", "content-length": str(total)})  # fmt: skip
    assert declared.status == 413 and declared.consumed == 0
    assert declared.headers["connection"] == "close"


@pytest.mark.parametrize("path", ["/v1/deployments", "/v1/review/api/meta", "/openapi.json"])
def test_a_get_with_a_huge_body_is_refused_or_left_unread(api, path):
    declared = call(api.app, "GET", path, chunks=zeros(300_000_000),
                    headers={"content-length": "300000000"})  # fmt: skip
    assert declared.status == 413 and declared.consumed == 0
    streamed = call(api.app, "GET", path, chunks=zeros(300_000_000))
    assert streamed.status in (200, 401) and streamed.consumed == 0


def test_an_upload_over_the_request_cap_is_413_before_auth_and_within_it_401(api):
    cap = api.settings.api_max_request_bytes
    over = call(api.app, "POST", "/v1/deployments/cam-01/media", chunks=zeros(cap + 10 * CHUNK),
                headers={"content-type": "multipart/form-data; boundary=x",
                         "content-length": str(cap + 10 * CHUNK)})  # fmt: skip
    assert over.status == 413 and over.consumed == 0
    # Under the cap, the token is checked before the body is read at all.
    under = call(api.app, "POST", "/v1/deployments/cam-01/media", chunks=zeros(CHUNK * 10),
                 headers={"content-type": "multipart/form-data; boundary=x"})  # fmt: skip
    assert under.status == 401 and under.consumed == 0
    # A program's own chunked upload past the cap stops at the cap, and nothing is kept.
    api.registry.create_deployment("alpha", Deployment("alpha-cam"))
    head, kind = multipart([("big.jpg", b"\xff\xd8\xff\xe0" + b"0" * 100)])
    chunks = [head[: head.index(b"\xff\xd8")] + b"\xff\xd8\xff\xe0", *zeros(cap + CHUNK * 4)]
    streamed = call(api.app, "POST", "/v1/deployments/alpha-cam/media", token=api.alpha,
                    chunks=chunks, headers={"content-type": kind})  # fmt: skip
    assert streamed.status == 413 and streamed.consumed <= cap + CHUNK
    assert not list((api.tmp / "uploads").rglob("*.*"))
    # The per-file cap (max_file_bytes) is separate and smaller.
    assert api.settings.max_file_bytes < cap


def test_wrong_tokens_from_one_address_get_429_with_retry_after_until_the_bucket_refills(api):
    app, wrong = api.app, "alpha.not-the-token"
    mallory, other = "203.0.113.66", "203.0.113.77"
    for _ in range(3):  # failed_auth_burst
        assert call(app, "GET", "/v1/deployments", token=wrong, client=mallory).status == 401
    blocked = call(app, "GET", "/v1/deployments", token=wrong, client=mallory)
    assert blocked.status == 429
    assert blocked.headers["retry-after"] == "60"  # one failure refills in 60 s
    assert "wrong tokens from your address" in blocked.json()["detail"]
    # While blocked, even a right token from that address waits: guesses get no answer at all.
    assert call(app, "GET", "/v1/deployments", token=api.alpha, client=mallory).status == 429
    # Another address, and a missing token (no guess), are not affected.
    assert call(app, "GET", "/v1/deployments", token=api.alpha, client=other).status == 200
    assert call(app, "GET", "/v1/deployments", client=mallory).status == 401

    api.now[0] += 59
    assert call(app, "GET", "/v1/deployments", token=wrong, client=mallory).status == 429
    api.now[0] += 1  # 60 s: one more guess allowed, then blocked again
    assert call(app, "GET", "/v1/deployments", token=wrong, client=mallory).status == 401
    again = call(app, "GET", "/v1/deployments", token=wrong, client=mallory)
    assert again.status == 429 and again.headers["retry-after"] == "60"
    api.now[0] += 60
    assert call(app, "GET", "/v1/deployments", token=api.alpha, client=mallory).status == 200


def test_the_failed_auth_buckets_stay_bounded_under_many_addresses():
    from trapline.services.api.auth import RateLimiter

    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0], max_keys=100)
    for i in range(1_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
        now[0] += 0.01
    assert len(limiter._buckets) <= 100


# -- item 8: no server path in any answer a program gets ---------------------------------------


def test_no_answer_to_a_program_names_a_server_path(api):
    app, alpha = api.app, api.alpha
    api.registry.create_deployment("alpha", Deployment("cam-02"))  # as an operator would
    roots = {str(api.tmp), api.results, str(api.base), "file://"}
    answers: dict[str, Answer] = {}

    def ask(name: str, method: str, path: str, **kw) -> Answer:
        answers[name] = call(app, method, path, **kw)
        return answers[name]

    ask("openapi", "GET", "/openapi.json")
    ask("docs", "GET", "/docs")
    ask("review page", "GET", "/v1/review/")
    ask("no token", "GET", "/v1/deployments")
    ask("wrong token", "GET", "/v1/deployments", token="alpha.wrong", client="192.0.2.1")
    ask("create", "POST", "/v1/deployments", token=alpha, json_body={"deployment_id": "a-1"})
    ask("taken", "POST", "/v1/deployments", token=alpha, json_body={"deployment_id": "a-1"})
    ask("has data", "POST", "/v1/deployments", token=alpha, json_body={"deployment_id": "cam-03"})
    ask("invalid", "POST", "/v1/deployments", token=alpha, json_body={"deployment_id": "../x"})
    ask("list", "GET", "/v1/deployments", token=alpha)
    ask("one", "GET", "/v1/deployments/a-1", token=alpha)
    ask("not mine", "GET", "/v1/deployments/cam-04", token=alpha)
    photo = jpeg_bytes(64, 48, seed=3)
    body, kind = multipart([("IMG_1.JPG", photo)])
    uploaded = ask("upload", "POST", "/v1/deployments/a-1/media", token=alpha, chunks=[body],
                   headers={"content-type": kind})  # fmt: skip
    body, kind = multipart([("notes.txt", b"not a photo at all")])
    ask("refused upload", "POST", "/v1/deployments/a-1/media", token=alpha, chunks=[body],
        headers={"content-type": kind})  # fmt: skip
    ask("presign", "POST", "/v1/deployments/a-1/presigned-uploads", token=alpha,
        json_body={"count": 1})  # fmt: skip
    ask("complete", "POST", "/v1/deployments/a-1/presigned-uploads/complete", token=alpha,
        json_body={"upload_ids": ["0" * 32]})  # fmt: skip
    ask("status", "GET", "/v1/deployments/cam-02/status", token=alpha)
    ask("too large", "POST", "/v1/deployments", chunks=zeros(2_000_000))
    meta = ask("meta", "GET", "/v1/review/api/meta", token=alpha)
    events = ask("events", "GET", "/v1/review/api/events", token=alpha).json()["events"]
    event_id = events[0]["event_id"]
    detail = ask("event", "GET", f"/v1/review/api/events/{event_id}", token=alpha).json()
    media_id = detail["photos"][0]["media_id"]
    ask("no event", "GET", "/v1/review/api/events/nope", token=alpha)
    ask("photo", "GET", f"/v1/review/api/photos/{event_id}/{media_id}", token=alpha)
    ask("no photo", "GET", f"/v1/review/api/photos/{event_id}/nope", token=alpha)
    ask("review", "POST", "/v1/review/api/reviews", token=alpha, headers={POST_HEADER: "1"},
        json_body={"event_id": event_id, "label": "wolf"})  # fmt: skip
    ask("review none", "POST", "/v1/review/api/reviews", token=alpha, headers={POST_HEADER: "1"},
        json_body={"event_id": "nope", "label": "wolf"})  # fmt: skip
    # A photo file gone since the run (its 404 used to quote the path).
    gone = call(app, "GET", f"/v1/review/api/events/{events[1]['event_id']}", token=alpha).json()
    for shown in gone["photos"]:
        for found in (Path(api.base) / "photos").glob(shown["name"]):
            found.rename(found.with_suffix(".moved"))
    ask("photo file gone", "GET",
        f"/v1/review/api/photos/{events[1]['event_id']}/{gone['photos'][0]['media_id']}",
        token=alpha)  # fmt: skip
    for found in (Path(api.base) / "photos").glob("*.moved"):
        found.rename(found.with_suffix(".jpg"))

    expected = {
        "create": 201, "taken": 409, "has data": 409, "invalid": 422, "list": 200, "one": 200,
        "not mine": 404, "upload": 201, "refused upload": 415, "presign": 409, "complete": 200,
        "status": 200, "too large": 413, "meta": 200, "no event": 404, "photo": 200,
        "no photo": 404, "review": 200, "review none": 404, "photo file gone": 404,
        "no token": 401, "wrong token": 401,
    }  # fmt: skip
    assert {k: answers[k].status for k in expected} == expected
    for name, answer in answers.items():
        shown = answer.text if name != "photo" else json.dumps(answer.headers)
        leaks = [root for root in roots if root in shown]
        assert not leaks, f"{name}: {leaks} in {shown[:600]}"
    assert "root" not in meta.json()
    (stored,) = uploaded.json()["files"]
    assert stored["key"] == f"a-1/{hashlib.sha256(photo).hexdigest()}.jpg"
    # The workers still get the absolute URL, in the event only.
    (_topic, _key, value, _headers) = api.kafka.sent[0]
    assert (api.tmp / "uploads" / stored["key"]).as_uri() in value.decode()
