"""What the API refuses before it knows who is calling: large bodies, and guessing tokens.

FastAPI reads and parses a JSON body before it resolves the bearer dependency, so without a cap
anyone could make a replica hold a body of any size before the 401 (a 300 MB body without a
token took it from 184 to 1,213 MB). `BodyLimit` is an ASGI middleware in front of every route:
a declared Content-Length over the route's cap is answered 413 before a byte is read, and the
bytes actually received are counted, so a chunked body (no Content-Length) stops at the first
chunk past the cap. Uploads keep their own, larger cap (`api_max_request_bytes`; files are
streamed and capped per file by `max_file_bytes`); every other route takes small JSON bodies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trapline.services.settings import Settings

UPLOAD_PATH = re.compile(r"/v1/deployments/[^/]+/media")


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """Limits on unauthenticated work; the defaults suit any deployment."""

    json_body_bytes: int = 1_000_000  # any request but an upload: JSON bodies are a few KB
    upload_body_bytes: int = 1_000_000_000  # an upload request (api_max_request_bytes)
    failed_auth_burst: int = 10  # wrong tokens one client address may send at once...
    failed_auth_per_s: float = 10 / 60  # ...then this many a second (10 a minute)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiLimits:
        return cls(
            json_body_bytes=settings.api_max_json_bytes,
            upload_body_bytes=settings.api_max_request_bytes,
            failed_auth_burst=settings.api_failed_auth_burst,
            failed_auth_per_s=settings.api_failed_auth_per_s,
        )

    def body_cap(self, method: str, path: str) -> tuple[int, str]:
        """(largest body, what to do instead) for a request."""
        if method == "POST" and UPLOAD_PATH.fullmatch(path):
            return self.upload_body_bytes, "split the upload"
        return self.json_body_bytes, "JSON bodies of this API are small"


class _BodyTooLarge(Exception):
    """Raised into the app from `receive`; the middleware answers 413 in its place."""


class BodyLimit:
    """ASGI middleware: 413 for a body over its route's cap, read no further (module doc).

    Ray Serve's proxy forwards a body as it arrives but queues what the replica has not taken
    without backpressure: the cap is also what one proxy may hold for a slow store.
    """

    def __init__(self, app: Any, limits: ApiLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap, hint = self.limits.body_cap(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > cap:
            await _too_large(send, f"request body of {int(declared):,} bytes", cap, hint)
            return
        received = 0
        over = False
        started = False

        async def counted() -> dict:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    over = True
                    raise _BodyTooLarge(received)
            return message

        async def guarded(message: dict) -> None:
            nonlocal started
            if over and not started:
                return  # whatever the app made of the exception (FastAPI: a 400), ours goes out
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _BodyTooLarge:
            pass
        if over and not started:
            await _too_large(send, "request body", cap, hint)


async def _too_large(send: Callable, what: str, cap: int, hint: str) -> None:
    body = json.dumps({"detail": f"{what} over the {cap:,} bytes allowed; {hint}"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of the body is never read
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
