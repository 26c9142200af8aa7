"""`trapline review` against a hostile upload and a curious network (issue 37, items 2, 7, 11).

A JPEG named `trap.html` with a script in a comment is served as image/jpeg whatever its name,
bytes that are no photo are refused, and every answer says nosniff and carries the page's
Content-Security-Policy; beyond loopback the server needs a token and then asks every request
for it; a photo with people is decoded reduced, once, and served from a cache bounded by bytes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from support.browser import BROWSER, CHROMIUM, NODE, needs_browser
from support.review_fixtures import write_review_results

from trapline.services.tools import review_photos
from trapline.services.tools.review import POST_HEADER, review_app, running_app, running_review
from trapline.services.tools.review_access import COOKIE, check_bind
from trapline.services.tools.review_data import ReviewFilter, ReviewStore
from trapline.services.tools.review_photos import PhotoCache, blurred_preview

TOKEN = "a-long-enough-review-token-42"
SCRIPT = b"<script>fetch('api/reviews',{method:'POST'})</script>"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_review_results(tmp_path_factory.mktemp("review-security"), events=12)[0]


@pytest.fixture
def root(results, tmp_path) -> str:
    target = tmp_path / "results"
    shutil.copytree(results, target)
    return str(target)


def jpeg_with_script(size: tuple[int, int] = (64, 48)) -> bytes:
    """A real JPEG whose comment segment holds a script: harmless as an image, a page if a
    browser were told it is text/html."""
    out = io.BytesIO()
    Image.new("RGB", size, (90, 120, 60)).save(out, "JPEG", comment=SCRIPT)
    assert SCRIPT in out.getvalue()
    return out.getvalue()


def swap_photo(store: ReviewStore, event_id: str, path: Path) -> str:
    """Point the event's first photo at `path` (as if the run had written that URI)."""
    _, photos = store._detail(event_id)
    photos[0]["uri"], photos[0]["name"] = path.as_uri(), path.name
    return photos[0]["media_id"]


def assert_guarded(answer: requests.Response) -> None:
    assert answer.headers["X-Content-Type-Options"] == "nosniff", answer.url
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, answer.url
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_a_jpeg_named_html_is_served_as_image_jpeg_and_cannot_run(root, tmp_path):
    store = ReviewStore(root, "ana", show_people=True)
    event = store.page(ReviewFilter(), 0, 1)["events"][0]["event_id"]
    hostile = tmp_path / "cam-01" / "trap.html"
    hostile.parent.mkdir()
    hostile.write_bytes(jpeg_with_script())
    media_id = swap_photo(store, event, hostile)
    with running_review(store) as url:
        answer = requests.get(url + f"api/photos/{event}/{media_id}", timeout=10)
    assert answer.status_code == 200 and answer.content == hostile.read_bytes()
    assert answer.headers["content-type"] == "image/jpeg"
    assert_guarded(answer)
    assert "sandbox" in answer.headers["Content-Security-Policy"]  # opened on its own: inert


@pytest.mark.parametrize(
    "content",
    [b"<!DOCTYPE html><script>alert(1)</script>", b"GIF89a" + SCRIPT, b"%PDF-1.4 " + SCRIPT],
)
def test_bytes_that_are_not_a_photo_or_video_are_refused_whatever_the_name(root, tmp_path, content):
    for show_people in (True, False):  # served as stored, or decoded to be blurred
        store = ReviewStore(root, "ana", show_people=show_people)
        event = store.page(ReviewFilter(label="person"), 0, 1)["events"][0]["event_id"]
        fake = tmp_path / "IMG_0001.jpg"
        fake.write_bytes(content)
        media_id = swap_photo(store, event, fake)
        with running_review(store) as url:
            answer = requests.get(url + f"api/photos/{event}/{media_id}", timeout=10)
        assert answer.status_code == 415, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert_guarded(answer)


def test_every_answer_says_nosniff_and_carries_the_policy(root):
    store = ReviewStore(root, "ana")
    event = store.page(ReviewFilter(), 0, 1)["events"][0]
    media_id = store.event(event["event_id"])["photos"][0]["media_id"]
    with running_review(store) as url:
        answers = [
            requests.get(url, timeout=10),
            requests.get(url + "assets/review.js", timeout=10),
            requests.get(url + "assets/review.css", timeout=10),
            requests.get(url + "assets/nope.js", timeout=10),
            requests.get(url + "api/meta", timeout=10),
            requests.get(url + "api/events", timeout=10),
            requests.get(url + f"api/events/{event['event_id']}", timeout=10),
            requests.get(url + "api/events/nope", timeout=10),
            requests.get(url + f"api/photos/{event['event_id']}/{media_id}", timeout=10),
            requests.get(url + f"api/photos/{event['event_id']}/nope", timeout=10),
            requests.get(url + "api/meta", headers={"Host": "evil.example"}, timeout=10),
            requests.post(url + "api/reviews", json={"event_id": "x", "label": "fox"}, timeout=10),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 200, 200, 200, 404, 200,
                                                404, 400, 403]  # fmt: skip
    for answer in answers:
        assert_guarded(answer)
    page = answers[0]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    # The policy allows no inline script or style: the page has none.
    html = page.text
    assert "<script>" not in html and "<style" not in html and " style=" not in html
    assert '<script src="assets/review.js">' in html


def test_the_routes_carry_the_headers_wherever_they_are_mounted(root):
    """The upload API mounts the same routes under /v1/review/ without the local server's
    middleware: the routes set nosniff and the policy themselves."""
    from fastapi import FastAPI

    from trapline.services.tools.review import review_router

    store = ReviewStore(root, "ana")
    event = store.page(ReviewFilter(), 0, 1)["events"][0]["event_id"]
    media_id = store.event(event)["photos"][0]["media_id"]
    app = FastAPI()
    app.include_router(review_router(lambda: store, lambda: "ana"), prefix="/v1/review")
    with running_app(app) as url:
        for path in ("", "assets/review.js", "api/meta", "api/events", f"api/events/{event}",
                     f"api/photos/{event}/{media_id}", f"api/photos/{event}/nope"):  # fmt: skip
            answer = requests.get(url + "v1/review/" + path, timeout=10)
            assert answer.status_code == (404 if path.endswith("nope") else 200), path
            assert_guarded(answer)


def test_beyond_loopback_the_server_needs_a_long_token():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.20", "review.example.org"):
        with pytest.raises(ValueError, match="TRAPLINE_REVIEW_TOKEN"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(ValueError, match="at least 16 characters"):
        check_bind("0.0.0.0", "hunter2")


def test_the_cli_refuses_0_0_0_0_without_a_token(root):
    trapline = Path(sys.executable).parent / "trapline"
    env = {k: v for k, v in os.environ.items() if k != "TRAPLINE_REVIEW_TOKEN"}
    done = subprocess.run(
        [str(trapline), "review", root, "--host", "0.0.0.0", "--port", "1"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "TRAPLINE_REVIEW_TOKEN" in done.stderr and "reviewing" not in done.stderr


def test_the_cli_serves_0_0_0_0_with_the_token_from_the_environment(root):
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    trapline = Path(sys.executable).parent / "trapline"
    process = subprocess.Popen(
        [str(trapline), "review", root, "--host", "0.0.0.0", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "TRAPLINE_REVIEW_TOKEN": TOKEN},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/meta"
    try:
        deadline, refused = time.monotonic() + 60, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                refused = requests.get(url, timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.3)
        assert refused is not None and refused.status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}", "Host": "review.example.org:8765"}
        assert requests.get(url, headers=bearer, timeout=10).json()["total"] == 12
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output = process.communicate(timeout=20)[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode()
    assert "reviewers sign in with the token" in output and TOKEN not in output


def test_with_a_token_every_request_needs_it_by_bearer_or_sign_in_cookie(root):
    store = ReviewStore(root, "ana")
    event = store.page(ReviewFilter(), 0, 1)["events"][0]["event_id"]
    media_id = store.event(event)["photos"][0]["media_id"]
    with running_app(review_app(store, ["*"], TOKEN)) as url:
        # No token: nothing but the sign-in form, whatever Host the client claims.
        for path in ("api/meta", "api/events", f"api/photos/{event}/{media_id}",
                     "assets/review.js"):  # fmt: skip
            for host in (None, "127.0.0.1"):
                headers = {"Host": host} if host else {}
                refused = requests.get(url + path, headers=headers, timeout=10)
                assert refused.status_code == 401, path
                assert_guarded(refused)
        posted = requests.post(url + "api/reviews", json={"event_id": event, "label": "fox"},
                               headers={POST_HEADER: "1"}, timeout=10)  # fmt: skip
        assert posted.status_code == 401
        wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
        assert requests.get(url + "api/meta", headers=wrong, timeout=10).status_code == 401
        first = requests.get(url, allow_redirects=False, timeout=10)
        assert first.status_code == 303 and first.headers["location"] == "sign-in"
        form = requests.get(url + "sign-in", timeout=10)
        assert form.status_code == 200 and 'name="token"' in form.text
        assert_guarded(form)

        # A bearer header (scripts).
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.get(url + "api/meta", headers=bearer, timeout=10).json()["total"] == 12

        # The sign-in form (browsers): a wrong token waits and is refused, the right one sets
        # an HttpOnly, SameSite=Strict cookie that is not the token itself.
        browser = requests.Session()
        started = time.monotonic()
        bad = browser.post(url + "sign-in", data={"token": "guess"}, allow_redirects=False,
                           timeout=10)  # fmt: skip
        assert bad.status_code == 401 and time.monotonic() - started >= 0.9
        assert COOKIE not in browser.cookies
        good = browser.post(url + "sign-in", data={"token": TOKEN}, allow_redirects=False,
                            timeout=10)  # fmt: skip
        assert good.status_code == 303 and good.headers["location"] == "./"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert browser.get(url, timeout=10).text.startswith("<!DOCTYPE html>")
        assert browser.get(url + "api/meta", timeout=10).json()["reviewer"] == "ana"
        photo = browser.get(url + f"api/photos/{event}/{media_id}", timeout=10)
        assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
        saved = browser.post(url + "api/reviews", json={"event_id": event, "label": "fox"},
                             headers={POST_HEADER: "1"}, timeout=10)  # fmt: skip
        assert saved.status_code == 200, saved.text
        forged = requests.get(url + "api/meta", cookies={COOKIE: "0" * 64}, timeout=10)
        assert forged.status_code == 401


@needs_browser
def test_a_reviewer_signs_in_with_the_token_in_chromium_and_the_page_works_under_the_policy(
    root,
):
    with running_app(review_app(ReviewStore(root, "ana"), ["*"], TOKEN)) as url:
        done = subprocess.run(
            [NODE, str(BROWSER / "review_sign_in.js"), url, TOKEN, CHROMIUM],
            capture_output=True, text=True, timeout=120, cwd=BROWSER,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["first_url"] == url + "sign-in" and seen["signed_in_url"] == url
    assert seen["position"] == "Event 1 of 12" and seen["photo_loaded"]
    assert not seen["cookie_visible_to_script"]  # HttpOnly
    assert not seen["inline_ran"]  # the policy refused the inline script ...
    assert len(seen["console_errors"]) == 1  # ... and said so; nothing else was refused
    assert "Content Security Policy" in seen["console_errors"][0]
    assert seen["page_errors"] == [] and seen["failed_requests"] == []


def person_photo(store: ReviewStore) -> tuple[str, str]:
    event = store.page(ReviewFilter(label="person"), 0, 1)["events"][0]["event_id"]
    photo = store.event(event)["photos"][0]
    assert photo["blurred"]
    return event, photo["media_id"]


def test_a_blurred_photo_is_decoded_once_then_served_from_the_cache(root):
    store = ReviewStore(root, "ana")
    event, media_id = person_photo(store)
    first, kind = store.photo(event, media_id)
    assert (store.decodes, kind) == (1, "image/jpeg")
    for _ in range(3):
        assert store.photo(event, media_id) == (first, kind)
    assert store.decodes == 1


def test_a_large_photo_is_blurred_from_a_reduced_decode_at_a_bounded_size(root, tmp_path):
    store = ReviewStore(root, "ana")
    event, media_id = person_photo(store)
    large = tmp_path / "IMG_LARGE.JPG"
    gradient = Image.linear_gradient("L").resize((9600, 7200)).convert("RGB")  # 69 MP
    gradient.save(large, "JPEG", quality=70)
    del gradient
    swap_photo(store, event, large)
    data, kind = store.photo(event, media_id)
    # JPEG draft decoded it at 1/4 scale (2,400 x 1,800), never at 9,600 x 7,200.
    assert store.decodes == 1 and max(store.last_decoded_size) <= 2 * 2048
    with Image.open(io.BytesIO(data)) as served:
        assert served.format == "JPEG" and max(served.size) <= 2048
        assert served.size == (2048, 1536)


def test_decodes_run_at_most_a_few_at_a_time(monkeypatch):
    active, most = 0, 0
    lock = threading.Lock()
    transpose = review_photos.ImageOps.exif_transpose

    def slow_transpose(image):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.1)
        with lock:
            active -= 1
        return transpose(image)

    monkeypatch.setattr(review_photos.ImageOps, "exif_transpose", slow_transpose)
    data = jpeg_with_script((400, 300))
    threads = [
        threading.Thread(target=blurred_preview, args=(data, [(0.1, 0.1, 0.5, 0.5)], "p.jpg"))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == review_photos.DECODE_SLOTS


def test_the_photo_cache_is_bounded_by_bytes():
    cache = PhotoCache(max_bytes=1000, max_item_bytes=400)
    for i in range(10):
        cache.put(i, b"x" * 300, "image/jpeg")
        assert cache.size <= 1000
    assert cache.get(0) is None and cache.get(9) == (b"x" * 300, "image/jpeg")
    cache.put("big", b"x" * 401, "image/jpeg")  # larger than an item may be: read again
    assert cache.get("big") is None and cache.size == 900
