"""Bulk producer: `trapline submit PHOTOS/ --deployment D` sends one upload message per photo.

media_id is the sha256 of the photo's bytes, so submitting a folder twice announces the same
media twice and the pipeline recognises the repeats. With `copy_to`, the bytes are first copied
(content-addressed, `{copy_to}/{deployment}/{sha256}{ext}`) into object storage the workers can
read, and the events point there; without it they point at the files where they are.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import fsspec

from trapline.pipelines.source import list_media, read_bytes
from trapline.pipelines.types import Failure, MediaRef, StageError
from trapline.pipelines.uploads import ID_PATTERN, Upload, encode_upload
from trapline.services.adapters import kafka_io
from trapline.services.adapters.media_store import absolute_url, content_uri

log = logging.getLogger(__name__)

WINDOW = 64  # photos read and hashed ahead of the producer (bounds memory on huge folders)


@dataclass(slots=True)
class SubmitReport:
    """What a submit did; every listed file is counted in `submitted` or in `failures`."""

    topic: str
    files: int = 0  # photos listed (by extension)
    submitted: int = 0  # events the broker acknowledged
    copied: int = 0  # photos copied to `copy_to` (already present ones are not copied again)
    already_copied: int = 0  # content-addressed copies found in place (a re-submit)
    bytes_read: int = 0
    hidden: int = 0  # dotfiles, not inputs
    # Files not announced: unsupported, unreadable, not copied, refused, undelivered.
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)


@dataclass(slots=True)
class _Prepared:
    ref: MediaRef
    event: Upload | None = None  # valid (it encoded once); `uploaded_at` set when sent
    size: int = 0
    copied: bool = False
    already_copied: bool = False
    failure: Failure | None = None


def submit_folder(
    source: str,
    bootstrap: str,
    topic: str = kafka_io.UPLOADS_TOPIC,
    deployment: str | None = None,
    copy_to: str | None = None,
    *,
    max_file_bytes: int = 100_000_000,
    threads: int = 4,
    progress: Callable[[int, int], None] | None = None,
    security: Mapping[str, Any] | None = None,
    producer: Any = None,
    delivery_timeout_s: float = 120.0,
    connect_timeout_s: float = 30.0,
    rate: float | None = None,
) -> SubmitReport:
    """Announce every photo under `source` (folder or fsspec URL) on `topic`.

    `deployment` names the deployment of every photo; None takes each photo's first folder
    below `source` (see `list_media`). Key = deployment id, value = a `trapline.upload/1` event
    (timestamp null: the pipeline reads EXIF; attributes.original_name = path below `source`).
    Files that cannot be read, copied, announced or delivered are listed in the report's
    `failures`, never skipped silently. `threads` read, hash and copy in parallel.
    `producer` reuses an existing kafka-python producer (else one is made and closed here).
    `rate` caps events per second (a program's quota, or a gentle backfill); None: no cap.
    Raises `FileNotFoundError` for a missing `source`, `kafka_io.KafkaUnavailable` when no broker
    answers within `connect_timeout_s`, and `ValueError` for an unusable `deployment`.
    """
    if deployment is not None and not ID_PATTERN.fullmatch(deployment):
        raise ValueError(
            f"deployment {deployment!r}: use letters, digits and - _ . : (it names files and "
            "partitions the topic)"
        )
    started = time.monotonic()
    report = SubmitReport(topic=topic)
    listing = list_media(source)
    report.files, report.hidden = len(listing.refs), listing.hidden
    report.failures.extend(listing.unsupported)
    fs, root = fsspec.core.url_to_fs(source)
    root = root.rstrip("/")
    own_producer = producer is None
    if producer is None:
        producer = kafka_io.make_producer(
            bootstrap,
            client_id="trapline-submit",
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            **dict(security or {}),
        )
    lock = threading.Lock()  # delivery callbacks run on the producer's I/O thread
    in_flight: dict[int, MediaRef] = {}
    done = 0

    def finished(number: int, failure: Failure | None) -> None:
        nonlocal done
        with lock:
            in_flight.pop(number, None)
            if failure is None:
                report.submitted += 1
            else:
                report.failures.append(failure)
            done += 1
            count = done
        if progress:
            progress(count, report.files)

    def undelivered(ref: MediaRef, error: object) -> Failure:
        return _failure(
            ref,
            "submit",
            "undelivered",
            f"{ref.uri}: not delivered to {topic} on {bootstrap}: {error}",
        )

    try:
        prepare = lambda ref: _prepare(ref, fs, root, deployment, copy_to, max_file_bytes)  # noqa: E731
        with ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="submit") as pool:
            for number, item in enumerate(_windowed(pool, prepare, listing.refs)):
                report.bytes_read += item.size
                report.copied += item.copied
                report.already_copied += item.already_copied
                if item.failure is not None:
                    finished(number, item.failure)
                    continue
                if rate:  # pace: event `number` leaves no earlier than number / rate seconds in
                    time.sleep(max(0.0, started + number / rate - time.monotonic()))
                with lock:
                    in_flight[number] = item.ref
                key = item.ref.deployment_id.encode("utf-8")
                # Stamped now, not when prepared (up to a window of events earlier): the
                # end-to-end latency metric counts from here.
                value = encode_upload(replace(item.event, uploaded_at=datetime.now(timezone.utc)))
                try:
                    future = producer.send(topic, key=key, value=value)
                except Exception as error:  # e.g. no metadata within max_block_ms
                    finished(number, undelivered(item.ref, error))
                    continue
                future.add_callback(lambda _meta, n=number: finished(n, None))
                future.add_errback(
                    lambda error, n=number, ref=item.ref: finished(n, undelivered(ref, error))
                )
        try:
            producer.flush(timeout=delivery_timeout_s)
        except Exception as error:  # timed out: what is still in flight is reported below
            log.warning("flush of %s did not complete: %s", topic, error)
    finally:
        if own_producer:
            producer.close(timeout=5)
    with lock:
        for _, ref in sorted(in_flight.items()):
            report.failures.append(
                undelivered(ref, f"no acknowledgement within {delivery_timeout_s:.0f} s")
            )
        in_flight.clear()
    report.seconds = time.monotonic() - started
    log.info(
        "submitted %d of %d photos to %s (%d failed) in %.1f s",
        report.submitted, report.files, topic, report.failed, report.seconds,
    )  # fmt: skip
    return report


def _windowed(
    pool: ThreadPoolExecutor, function: Callable[[MediaRef], _Prepared], refs: list[MediaRef]
) -> Iterator[_Prepared]:
    """`pool.map` in input order, with at most `WINDOW` items in flight."""
    pending = []
    for ref in refs:
        pending.append(pool.submit(function, ref))
        if len(pending) >= WINDOW:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def _prepare(
    ref: MediaRef,
    fs: Any,
    root: str,
    deployment: str | None,
    copy_to: str | None,
    max_file_bytes: int,
) -> _Prepared:
    """Read, hash, copy and encode one photo; any error becomes the item's failure."""
    ref = MediaRef(ref.uri, deployment or ref.deployment_id)
    try:
        return _prepare_one(ref, fs, root, copy_to, max_file_bytes)
    except Exception as error:  # a storage library's own error type: report it, go on
        message = f"{ref.uri}: {type(error).__name__}: {error}"
        return _Prepared(ref, failure=_failure(ref, "read", "unexpected", message))


def _prepare_one(
    ref: MediaRef, fs: Any, root: str, copy_to: str | None, max_file_bytes: int
) -> _Prepared:
    deployment_id = ref.deployment_id
    item = _Prepared(ref)
    try:
        data = read_bytes(ref.uri, max_file_bytes)
    except StageError as error:
        item.failure = _failure(ref, "read", error.kind, error.message)
        return item
    item.size = len(data)
    sha256 = hashlib.sha256(data).hexdigest()
    path = fs._strip_protocol(ref.uri)
    relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    uri = absolute_url(ref.uri)
    if copy_to is not None:
        uri = content_uri(copy_to, deployment_id, sha256, posixpath.splitext(path)[1])
        try:
            item.copied, item.already_copied = _copy(data, uri)
        except Exception as error:  # OSError, or a storage library's own error
            item.failure = _failure(
                ref, "write", "copy_failed", f"{ref.uri}: copy to {uri} failed: {error}"
            )
            return item
        uri = absolute_url(uri)
    event = Upload(
        uri=uri,
        deployment_id=deployment_id,
        media_id=sha256,
        sha256=sha256,
        uploaded_at=datetime.now(timezone.utc),
        attributes={"original_name": relative},
    )
    try:
        encode_upload(event)  # refuse an invalid event here, with the photo's name
        item.event = event
    except ValueError as error:
        item.failure = _failure(ref, "event", "invalid_field", f"{ref.uri}: {error}")
    return item


def _copy(data: bytes, uri: str) -> tuple[bool, bool]:
    """Write `data` at `uri` unless it is already there: (copied, already present)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path) and fs.size(path) == len(data):
        return False, True  # content-addressed: same name, same bytes
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(data)
    return True, False


def _failure(ref: MediaRef, stage: str, kind: str, message: str) -> Failure:
    return Failure(ref.uri, ref.deployment_id, None, stage, kind, message)
