"""`trapline review RESULTS`: a local web page to check and correct the machine's labels.

The reviewer walks through events (bursts) with their photos and boxes, keyboard first, and each
decision is appended to the results' `reviews` table (pipelines/reviews.py). The page is static
(`review_page/`); it talks JSON to the routes below, which `review_router` builds for two hosts:
`review_app` (the local server, loopback only, one reviewer) and the upload API
(`services/api/app.py`, a program's own deployments, bearer token). docs/review.md has the keys.

Routes (relative to where the router is mounted):
    GET  /                             the page
    GET  /assets/{name}                its script and style
    GET  /api/meta                     deployments, labels, taxon names, totals, reviewer
    GET  /api/events?deployment=&label=&min_conf=&max_conf=&unreviewed=&offset=&limit=
                                       one page of events (server-side paging) and progress
    GET  /api/events/{event_id}        one event's photos and boxes
    GET  /api/photos/{event_id}/{media_id}   photo bytes (people blurred unless allowed)
    POST /api/reviews                  {event_id, label, count?, comment?}: append a review
A POST needs the header `X-Trapline-Review: 1`, so another web site cannot post from the
reviewer's browser (a cross-site request with a custom header needs a CORS preflight, which
this server never grants). Every page, asset and photo carries `X-Content-Type-Options: nosniff`
and a Content-Security-Policy that runs only this server's own script file; photos are typed by
their bytes (review_photos.py), so a JPEG named `trap.html` is never a page at this origin.

The local server listens on loopback with no sign-in; anywhere else it needs a token
(`review_app(token=...)`, `trapline review --token` or TRAPLINE_REVIEW_TOKEN), and then every
request carries it: a bearer header, or the HttpOnly, SameSite=Strict cookie the sign-in form
(GET/POST /sign-in) sets (review_access.py).
"""

# No `from __future__ import annotations`: FastAPI resolves the endpoints' annotations, and
# `Store` and `Reviewer` are local to review_router.

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from trapline.services.tools.review_access import (
    LOOPBACK_NAMES,
    PHOTO_HEADERS,
    SECURITY_HEADERS,
    SecurityHeaders,
    TokenGate,
    check_bind,
    is_loopback,
    sign_in_routes,
)
from trapline.services.tools.review_data import Hidden, NotFound, ReviewFilter, ReviewStore
from trapline.services.tools.review_photos import NotServable

log = logging.getLogger(__name__)

PAGE_FOLDER = "review_page"
ASSETS = {"review.js": "text/javascript", "review.css": "text/css"}
POST_HEADER = "X-Trapline-Review"


class ReviewBody(BaseModel):
    """One decision about one event."""

    event_id: str = Field(min_length=1, max_length=200)
    label: str = Field(min_length=1, max_length=200, description="Taxon, blank, person or vehicle.")
    count: int | None = Field(None, ge=0, le=10_000, description="Individuals counted.")
    comment: str | None = Field(None, max_length=2_000)


def _asset(name: str) -> bytes:
    return resources.files("trapline.services.tools").joinpath(PAGE_FOLDER, name).read_bytes()


def _guarded(response: Response) -> None:
    """nosniff and the policy on the JSON answers too, wherever the router is mounted (the
    page, assets and photos set theirs)."""
    response.headers.update(SECURITY_HEADERS)


def review_router(
    store_of: Callable[..., ReviewStore], reviewer_of: Callable[..., str | None]
) -> APIRouter:
    """The review routes; `store_of` and `reviewer_of` are FastAPI dependencies (auth lives there)."""
    router = APIRouter(dependencies=[Depends(_guarded)])
    Store = Annotated[ReviewStore, Depends(store_of)]
    Reviewer = Annotated[str | None, Depends(reviewer_of)]

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(
            _asset("index.html"), headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        )

    @router.get("/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no asset {name}", headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return Response(_asset(name), media_type=ASSETS[name], headers=headers)

    @router.get("/api/meta")
    async def meta(store: Store, reviewer: Reviewer) -> dict:
        found = await run_in_threadpool(store.meta)
        return {**found, "reviewer": reviewer or store.reviewer}

    @router.get("/api/events")
    async def events(
        store: Store,
        deployment: str | None = None,
        label: str | None = None,
        min_conf: Annotated[float | None, Query(ge=0, le=1)] = None,
        max_conf: Annotated[float | None, Query(ge=0, le=1)] = None,
        unreviewed: bool = False,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict:
        chosen = ReviewFilter(deployment or None, label or None, min_conf, max_conf, unreviewed)
        return await run_in_threadpool(store.page, chosen, offset, limit)

    @router.get("/api/events/{event_id}")
    async def event(event_id: str, store: Store) -> dict:
        try:
            return await run_in_threadpool(store.event, event_id)
        except NotFound as error:
            raise HTTPException(404, str(error)) from error

    @router.get("/api/photos/{event_id}/{media_id}")
    async def photo(event_id: str, media_id: str, store: Store) -> Response:
        try:
            data, kind = await run_in_threadpool(store.photo, event_id, media_id)
        except NotFound as error:
            raise HTTPException(404, str(error), headers=PHOTO_HEADERS) from error
        except Hidden as error:
            raise HTTPException(403, str(error), headers=PHOTO_HEADERS) from error
        except NotServable as error:
            raise HTTPException(415, str(error), headers=PHOTO_HEADERS) from error
        except FileNotFoundError as error:
            raise HTTPException(
                404,
                f"photo file missing (moved or deleted since the run): {error}",
                headers=PHOTO_HEADERS,
            ) from error
        headers = {**PHOTO_HEADERS, "Cache-Control": "private, max-age=3600"}
        return Response(data, media_type=kind, headers=headers)

    @router.post("/api/reviews")
    async def review(
        body: ReviewBody,
        store: Store,
        reviewer: Reviewer,
        marker: Annotated[str | None, Header(alias=POST_HEADER)] = None,
    ) -> dict:
        if marker != "1":
            raise HTTPException(403, f"a review must be posted with the header {POST_HEADER}: 1")
        try:
            return await run_in_threadpool(
                lambda: store.save(
                    body.event_id, body.label, count=body.count, comment=body.comment,
                    reviewer=reviewer,
                )
            )  # fmt: skip
        except NotFound as error:
            raise HTTPException(404, str(error)) from error
        except ValueError as error:
            raise HTTPException(422, str(error)) from error

    return router


def review_app(
    store: ReviewStore, allowed_hosts: list[str] | None = None, token: str | None = None
) -> FastAPI:
    """The local review server: one store, one reviewer; with `token`, every request needs it
    (a bearer header, or the cookie the sign-in form sets), without, loopback only."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title="Trapline review", docs_url=None, redoc_url=None, openapi_url=None)
    if token is not None:
        sign_in_routes(app, token, _asset("sign-in.html"))
        app.add_middleware(TokenGate, token=token)
    # A page on another site could point a DNS name at 127.0.0.1 (DNS rebinding): only our own
    # host names are answered. (Not a sign-in: any client can send `Host: 127.0.0.1`.)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK_NAMES))
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, refusals too
    app.include_router(review_router(lambda: store, lambda: store.reviewer))
    return app


def serve_review(
    store: ReviewStore, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> None:
    """Serve the review page until interrupted (beyond loopback only with a token)."""
    import uvicorn

    check_bind(host, token)
    # With a token the token is the gate, whatever name the reviewers reach this machine by.
    hosts = ["*"] if token is not None and not is_loopback(host) else [*LOOPBACK_NAMES, host]
    uvicorn.run(review_app(store, hosts, token), host=host, port=port, log_level="warning")


@contextmanager
def running_review(store: ReviewStore, port: int = 0) -> Iterator[str]:
    """Serve the review page in a background thread; yields its URL (tests, benchmarks)."""
    with running_app(review_app(store), port) as url:
        yield url


@contextmanager
def running_app(app: FastAPI, port: int = 0) -> Iterator[str]:
    """Serve an ASGI app on loopback in a background thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
