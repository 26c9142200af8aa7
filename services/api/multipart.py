"""Stream a multipart/form-data body into per-file sinks, chunk by chunk.

FastAPI's `UploadFile` would spool every file to a temporary file (or memory) before the
handler runs, and only then could the size cap or the type check refuse it. Here python-multipart's
low-level parser calls us for each piece of a part as the body arrives, so a file goes straight to
object storage and a refusal happens at the byte that crosses the line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from trapline.services.api.storage import Refused

FIELD = "files"  # the one form field the upload endpoint takes; repeat it for many files
MAX_FILENAME_CHARS = 1024


class PartSink(Protocol):
    def write(self, data: bytes) -> None: ...


class MultipartFiles:
    """Feed body chunks; every `files` part goes to the sink `open_file(filename)` returns.

    Raises `Refused` for what a client got wrong: not multipart, no boundary, a field other
    than `files`, a part without a file name, more than `max_files` files, a malformed or
    truncated body. Errors raised by a sink (e.g. its size cap) pass through unchanged.
    """

    def __init__(
        self, content_type: str | None, open_file: Callable[[str], PartSink], max_files: int
    ):
        kind, params = parse_options_header(content_type or "")
        if kind != b"multipart/form-data":
            raise Refused(
                415, f"send multipart/form-data with one '{FIELD}' part per file, "
                f"not {content_type or 'no Content-Type'}"
            )  # fmt: skip
        boundary = params.get(b"boundary")
        if not boundary:
            raise Refused(400, "multipart/form-data without a boundary parameter")
        self.open_file = open_file
        self.max_files = max_files
        self.files = 0
        self.ended = False
        self._sink: PartSink | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                    "on_part_end": self._part_end,
                    "on_end": self._end,
                },
            )
        except (ValueError, MultipartParseError) as error:
            raise Refused(400, f"unusable multipart boundary: {error}") from None

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise Refused(400, f"malformed multipart body: {error}") from None

    def finish(self) -> None:
        """The body ended: refuse a truncated one (the last file would be cut short)."""
        try:
            self._parser.finalize()
        except MultipartParseError as error:
            raise Refused(400, f"malformed multipart body: {error}") from None
        if not self.ended:
            raise Refused(400, "multipart body ended before its closing boundary (truncated?)")
        if self.files == 0:
            raise Refused(400, f"no files: send one or more '{FIELD}' parts")

    # -- parser callbacks ----------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}
        self._sink = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        kind, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if kind != b"form-data" or name != FIELD:
            shown = name[:40] or "(unnamed)"
            raise Refused(400, f"unexpected form field {shown!r}: send files as '{FIELD}' parts")
        if b"filename" not in params:
            raise Refused(400, f"a '{FIELD}' part must be a file (it has no filename)")
        self.files += 1
        if self.files > self.max_files:
            raise Refused(413, f"more than {self.max_files} files in one request; split it")
        filename = params[b"filename"].decode("utf-8", "replace")[:MAX_FILENAME_CHARS]
        self._sink = self.open_file(filename)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(bytes(data[start:end]))

    def _part_end(self) -> None:
        self._sink = None

    def _end(self) -> None:
        self.ended = True
