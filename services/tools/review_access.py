"""Who may use the review screen, and what every answer says to the browser.

`trapline review` listens on loopback with no sign-in (any program on the machine may use it;
the `Host` check only stops DNS rebinding). Anywhere else it needs a token, and then every
request carries it: `Authorization: Bearer TOKEN` (scripts) or the cookie the sign-in form sets
(browsers: HttpOnly, so no script reads it; SameSite=Strict, so no other site's page sends it;
an HMAC of the token, so the cookie is not the token). Both are compared in constant time.
Every answer carries nosniff and a Content-Security-Policy that runs only the page's own script.
Routes and pages: services/tools/review.py; docs/review.md, docs/security.md.
"""

# No `from __future__ import annotations`: FastAPI resolves the endpoints' annotations.

import asyncio
import hashlib
import hmac
import ipaddress

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

# The page needs its own script and style files, JSON from this server, and photos as blob: URLs
# (fetched with the API's token, then shown); `data:` is its empty favicon. Nothing inline.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PHOTO_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"  # opened on its own: inert
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": PAGE_POLICY}
PHOTO_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": PHOTO_POLICY}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
COOKIE = "trapline_review"
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """Whether listening on `host` reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, not ours to promise


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, or with one easy to guess."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"--host {host} would let anyone who can reach this machine read and review the "
            "photos: the page has no sign-in of its own. Give a token (--token or "
            "TRAPLINE_REVIEW_TOKEN, e.g. from `python -c 'import secrets; "
            "print(secrets.token_urlsafe())'`), or keep the default --host 127.0.0.1"
        )
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the review token needs at least {MIN_TOKEN_CHARS} characters")


def session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"trapline review session", hashlib.sha256).hexdigest()


def sign_in_routes(app: FastAPI, token: str, form: bytes) -> None:
    """GET /sign-in: `form`; POST /sign-in: check the token, set the cookie."""
    session = session_value(token)
    guessing = asyncio.Lock()  # wrong tokens wait their turn: one guess a second in all

    @app.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    def sign_in_page() -> HTMLResponse:
        return HTMLResponse(form, headers=SECURITY_HEADERS)

    @app.post("/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        from urllib.parse import parse_qs

        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > 4096:
                return HTMLResponse("form too large", 413, headers=SECURITY_HEADERS)
        given = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            async with guessing:
                await asyncio.sleep(1.0)
            return HTMLResponse(form, 401, headers=SECURITY_HEADERS)
        answer = RedirectResponse("./", 303, headers=SECURITY_HEADERS)
        answer.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        return answer


class TokenGate:
    """Every request carries the token (bearer) or the sign-in cookie; the sign-in form and
    its style are the only things answered without. Both compared in constant time."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.bearer = f"Bearer {token}".encode()
        self.cookie = session_value(token).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope) or self._signed_in(scope):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] == "/":
            refused: Response = RedirectResponse("sign-in", 303)
        else:
            refused = JSONResponse(
                {"detail": "sign in first (GET /sign-in) or send Authorization: Bearer TOKEN"},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        await refused(scope, receive, send)

    @staticmethod
    def _open(scope: Scope) -> bool:
        return scope["path"] in ("/sign-in", "/assets/review.css")

    def _signed_in(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        if hmac.compare_digest(headers.get(b"authorization", b""), self.bearer):
            return True
        from http.cookies import SimpleCookie

        jar = SimpleCookie()
        try:
            jar.load(headers.get(b"cookie", b"").decode("latin-1"))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no sign-in
            return False
        found = jar.get(COOKIE)
        return found is not None and hmac.compare_digest(found.value.encode(), self.cookie)


class SecurityHeaders:
    """nosniff and the page's policy on every answer that does not set its own."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (name.lower().encode(), value.encode())
                    for name, value in SECURITY_HEADERS.items()
                    if name.lower().encode() not in names
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)
