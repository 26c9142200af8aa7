"""A loopback HTTP proxy in front of a real S3 gateway that can answer as an overloaded one.

While `broken`, every request gets what S3 sends when it sheds load: `503 SlowDown` with its
XML error body (`mode="503"`), or the connection is reset without an answer (`mode="reset"`).
Otherwise requests go to the gateway unchanged (Host header included, so SigV4 signatures made
for the proxy's address still verify) and its answers come back. Clients see a real server
misbehaving, through their own retries, parsers and error translation; nothing is patched.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId>"
    b"</Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class HttpFaultProxy:
    def __init__(self, upstream_url: str, mode: str = "503"):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.mode = mode
        self.broken = False
        self.faults = 0  # requests answered 503 or reset while broken
        self.forwarded = 0
        self.photo_reads = 0  # GETs of photos (.jpg) forwarded
        self._trip: tuple[int, float] | None = None
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HttpFaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def trip_after(self, photo_reads: int, outage_s: float) -> None:
        """Break once `photo_reads` more photos went through, and heal `outage_s` later: the
        outage starts in the middle of the work, whatever the worker's pace."""
        self._trip = (self.photo_reads + photo_reads, outage_s)

    def count(self, faulted: bool, photo: bool = False) -> None:
        with self._lock:
            if faulted:
                self.faults += 1
                return
            self.forwarded += 1
            self.photo_reads += photo
            if self._trip is not None and self.photo_reads >= self._trip[0]:
                outage_s, self._trip = self._trip[1], None
                self.broken = True
                timer = threading.Timer(outage_s, setattr, (self, "broken", False))
                timer.daemon = True
                timer.start()


def _handler(proxy: HttpFaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if proxy.broken:
                proxy.count(True)
                if proxy.mode == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    self.connection.close()  # linger 0: the client gets a RST
                    return
                self.send_response(503, "Slow Down")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(SLOW_DOWN)
                return
            proxy.count(False, self.command == "GET" and self.path.split("?")[0].endswith(".jpg"))
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            try:
                upstream.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in self.headers.items():
                    upstream.putheader(name, value)
                upstream.endheaders(body or None)
                answer = upstream.getresponse()
                data = answer.read()
            finally:
                upstream.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    return Handler
