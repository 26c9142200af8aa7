"""HTTP download that survives a dropped connection: the network half of `models fetch`.

Model files are large (MegaDetector v5 280 MB, DeepFaune 1.2 GB) and come from university and
release servers that drop long transfers. Bytes go to `<file>.part`; a dropped connection is
resumed with an HTTP Range request from the bytes already on disk (here, a few times with a
short pause, and again on the next call, since the `.part` stays). A server that ignores Range
(answers 200) restarts the file from zero. Whether the bytes are the publisher's is not decided
here: the caller checks the finished file against the published checksum.

Only the standard library speaks HTTP (urllib follows GitHub's redirects to its storage host
and keeps the Range header across them); rich draws the progress bar.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

CHUNK = 1 << 20
USER_AGENT = "trapline-model-fetch (+https://github.com/trapline)"


class DownloadError(RuntimeError):
    """The server answered, but not with the whole file (HTTP error, or cut off too often)."""


class Offline(DownloadError):
    """The server cannot be reached at all (refused, no route, no DNS, timed out)."""


class _Cut(Exception):
    """The connection dropped part-way through the body; resumable."""


@dataclass(frozen=True)
class Digests:
    sha256: str
    md5: str
    size: int


def digests(path: Path) -> Digests:
    """sha256 and md5 of a file in one read (md5 because that is what MegaDetector publishes)."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return Digests(sha.hexdigest(), md5.hexdigest(), size)


def download(
    url: str,
    dest: Path,
    *,
    label: str | None = None,
    console: Console | None = None,
    retries: int = 3,
    timeout_s: float = 30.0,
    pause_s: float = 1.0,
) -> None:
    """Fetch `url` into `dest`, resuming `dest.part` if a previous try left one."""
    part = dest.with_name(dest.name + ".part")
    console = console or Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label or dest.name, total=None)
        for attempt in range(retries + 1):
            try:
                _once(url, part, progress, task, timeout_s)
                break
            except _Cut as cut:
                if attempt == retries:
                    have = part.stat().st_size if part.exists() else 0
                    raise DownloadError(
                        f"{url}: the connection dropped {attempt + 1} times ({cut}); {have:,} "
                        f"bytes are kept in {part}: rerun to resume from there"
                    ) from None
                time.sleep(pause_s * (attempt + 1))
    os.replace(part, dest)


def _once(url: str, part: Path, progress: Progress, task, timeout_s: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout_s
        )
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after our offset: whole already, or stale
            size = _range_total(error.headers.get("Content-Range", ""))
            if size == offset:
                return
            part.unlink()
            raise _Cut("the partial file did not fit the server's; restarting") from None
        raise DownloadError(
            f"{url}: the server answered HTTP {error.code} {error.reason}"
        ) from None
    except urllib.error.URLError as error:
        raise Offline(_reason(error.reason)) from None
    except (TimeoutError, ConnectionError) as error:
        raise Offline(_reason(error)) from None
    with response:
        if offset and response.status == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != offset:
                part.unlink()
                raise _Cut("the server resumed at another offset; restarting")
        elif offset:  # 200: the server ignored Range and sends the whole file again
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        progress.update(task, total=total, completed=offset)
        with part.open("ab" if offset else "wb") as f:
            while chunk := _read(response):
                f.write(chunk)  # a full disk raises here, and is not taken for a dropped line
                progress.update(task, advance=len(chunk))
        if total is not None and part.stat().st_size < total:
            raise _Cut(f"got {part.stat().st_size:,} of {total:,} bytes")


def _read(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read(CHUNK)
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
        raise _Cut(_reason(error)) from None


def _range_total(content_range: str) -> int | None:
    match = re.match(r"bytes \*/(\d+)", content_range)
    return int(match.group(1)) if match else None


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host name not found"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, http.client.IncompleteRead):
        return f"connection closed after {len(reason.partial):,} more bytes"
    return str(reason) or type(reason).__name__
