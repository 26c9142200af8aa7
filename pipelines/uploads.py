"""Event stage: turn an upload message (raw Kafka value bytes) into media references, or failures.

Two shapes are accepted on `trapline.uploads`:

- `trapline.upload/1`, our own event (one photo per message), built by `encode_upload`.
- S3 / MinIO / Ceph RGW bucket notifications (`{"Records": [...]}`): one photo per `ObjectCreated`
  record; the deployment comes from the object key through a pattern with a `deployment` group.

Nothing here raises on bad input: every message ends as `ParsedUpload`s, `Failure`s (stage
"event", the original bytes kept for the dead-letter topic) or deliberately `ignored` records
(deletions, folder markers, S3's test event), so one bad producer never blocks a partition.
No Kafka import here: the worker passes the record's value, key and "topic/partition/offset".

Over 400 lines on purpose: the checks of every field of an untrusted message are in one module, so
the accepted schema reads as one.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from trapline.pipelines.source import PHOTO_EXTENSIONS
from trapline.pipelines.types import Failure, MediaRef
from trapline.pipelines.video import VIDEO_EXTENSIONS

# What the folder listing takes (pipelines/source.py); anything else is refused by its name
# before a worker reads it, with the kind folder runs give it (`unsupported_type`).
MEDIA_EXTENSIONS = PHOTO_EXTENSIONS | VIDEO_EXTENSIONS

SCHEMA_V1 = "trapline.upload/1"

MAX_UPLOAD_BYTES = 1_000_000  # a message larger than this is refused before JSON parsing
MAX_ID_CHARS = 256  # media_id and deployment_id
MAX_URI_CHARS = 2048
MAX_S3_KEY_BYTES = 1024  # the S3 limit on object key length (UTF-8 bytes)
MAX_RECORDS = 1000  # bucket-notification records per message
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_CHARS = 128
MAX_ATTRIBUTE_VALUE_CHARS = 4096  # fits a full relative path as `original_name`

# Safe as a file name on every platform we write to: no separators, no leading dot (hidden or ..).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
# The first path segment of the object key: "cam-07/2024/IMG_0001.JPG" -> "cam-07".
DEFAULT_DEPLOYMENT_PATTERN = r"^(?P<deployment>[^/]+)/"
# Schemes a worker will open by default. http(s) is left out on purpose: an event must not make a
# worker fetch arbitrary URLs (SSRF); add it (and "memory" for tests) via `allowed_schemes`.
DEFAULT_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "file"})

# ISO 8601 extended format with a mandatory offset; parsed the same way on Python 3.10 to 3.13
# (3.11's fromisoformat accepts more forms than 3.10's, so we normalise first).
_ISO_PATTERN = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}(?::\d{2})?)(?:[.,](?P<frac>\d{1,9}))?"
    r"(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(slots=True)
class ParsedUpload:
    """One photo announced by a message, with what the event said beyond the `MediaRef`."""

    ref: MediaRef
    uploaded_at: datetime | None  # when the producer saw the upload (S3: eventTime); latency metric
    sha256: str | None = None  # the producer's sha256 of the bytes, lowercase hex; verify on read
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ParseResult:
    """Everything one message turned into. A message yields events, failures, or both (S3)."""

    events: list[ParsedUpload] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)  # each goes to the DLQ and `failures`
    ignored: list[str] = field(default_factory=list)  # records skipped on purpose, one line each

    @property
    def refs(self) -> list[MediaRef]:
        return [event.ref for event in self.events]


@dataclass(frozen=True, slots=True)
class Upload:
    """A `trapline.upload/1` event as a producer builds it; `encode_upload` serialises it."""

    uri: str  # where the bytes are: s3://bucket/key.jpg, file:///abs/path.jpg
    deployment_id: str  # also the message key, so one deployment's photos share a partition
    media_id: str | None = None  # stable id; None lets the pipeline use the sha256 of the bytes
    timestamp: datetime | None = None  # capture time with offset; None: the pipeline reads EXIF
    sha256: str | None = None  # hex sha256 of the bytes, when the producer knows it
    uploaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    attributes: Mapping[str, str] = field(default_factory=dict)  # free-form, e.g. original_name


class _Invalid(Exception):
    """Internal: one field of one event is wrong; becomes a `Failure`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.uri: str | None = None  # the photo, once known: the failures row names it
        self.deployment_id: str | None = None
        self.media_id: str | None = None


def record_source(topic: str, partition: int, offset: int) -> str:
    """The `source` string of a Kafka record, as the tables store it."""
    return f"{topic}/{partition}/{offset}"


def split_source(source: str) -> tuple[str, int, int]:
    """Inverse of `record_source` (topic names cannot contain '/')."""
    topic, partition, offset = source.rsplit("/", 2)
    return topic, int(partition), int(offset)


def parse_upload(
    value: bytes | None,
    *,
    source: str | None = None,
    key: bytes | None = None,
    deployment_pattern: str | re.Pattern[str] | None = None,
    allowed_schemes: frozenset[str] | set[str] | None = DEFAULT_SCHEMES,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> ParseResult:
    """Validate one message value; never raises on any input bytes.

    `source` is "topic/partition/offset" (see `record_source`) and lands on every ref and failure.
    `key` is the message key: for `trapline.upload/1` it must be the deployment id when present
    (duplicate uploads of a photo are only recognised within one partition); S3 notifications
    are keyed however the bucket's notifier likes, so their key is not checked.
    `deployment_pattern` (S3 records only) is searched in the decoded object key; its named group
    `deployment` is the deployment id. Default: the key's first path segment. An invalid pattern
    is a configuration error and raises `ValueError` (call `compile_deployment_pattern` at start-up).
    `allowed_schemes`: URL schemes a worker may open (None: any; producers check with None).
    """
    pattern = compile_deployment_pattern(deployment_pattern)
    result = ParseResult()
    raw = bytes(value) if value is not None else None
    try:
        document = _load_json(raw, max_bytes)
        if not isinstance(document, dict):
            raise _Invalid(
                "unknown_schema",
                f"expected a JSON object, got {_json_type(document)}; "
                f"send a {SCHEMA_V1} event or an S3 bucket notification",
            )
        if "schema" in document:
            result.events.append(_parse_v1(document, source, key, allowed_schemes))
        elif "Records" in document:
            _parse_s3(document, source, pattern, allowed_schemes, raw, result)
        elif document.get("Event") == "s3:TestEvent":
            # Sent once by AWS when a notification is configured; not an upload.
            result.ignored.append(f"{_where(source)}: S3 test event ignored")
        else:
            raise _Invalid(
                "unknown_schema",
                f"no 'schema' field and no S3 'Records'; send a {SCHEMA_V1} event or an S3 "
                f"bucket notification (keys seen: {_short(sorted(document)[:10])})",
            )
    except _Invalid as error:
        result.failures.append(_failure(error, source, raw))
    return result


@functools.lru_cache(maxsize=32)
def _compile(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"deployment pattern {pattern!r} is not a regular expression: {error}"
        ) from None
    if "deployment" not in compiled.groupindex:
        raise ValueError(
            f"deployment pattern {pattern!r} has no named group 'deployment'; "
            r"e.g. '^(?P<deployment>[^/]+)/' takes the first folder of the object key"
        )
    return compiled


def compile_deployment_pattern(pattern: str | re.Pattern[str] | None) -> re.Pattern[str]:
    """The pattern that finds the deployment in an S3 object key; `ValueError` if unusable."""
    if pattern is None:
        return _compile(DEFAULT_DEPLOYMENT_PATTERN)
    if isinstance(pattern, re.Pattern):
        if "deployment" not in pattern.groupindex:
            raise ValueError(
                f"deployment pattern {pattern.pattern!r} has no named group 'deployment'"
            )
        return pattern
    return _compile(pattern)


def encode_upload(event: Upload) -> bytes:
    """The JSON bytes of `event`; `ValueError` if a consumer would refuse it.

    The bytes are checked with the consumer's own parser, so a producer can never emit an event
    that ends in the dead-letter topic (scheme checks aside: the consumer's list is its own).
    """
    for name, when in (("timestamp", event.timestamp), ("uploaded_at", event.uploaded_at)):
        if when is not None and (when.tzinfo is None or when.utcoffset() is None):
            raise ValueError(
                f"upload message {event.uri}: {name} {when.isoformat()} has no UTC offset"
            )
    document = {
        "schema": SCHEMA_V1,
        "media_id": event.media_id,
        "uri": event.uri,
        "deployment_id": event.deployment_id,
        "timestamp": event.timestamp.isoformat() if event.timestamp else None,
        "sha256": event.sha256.lower() if isinstance(event.sha256, str) else event.sha256,
        "uploaded_at": event.uploaded_at.isoformat(),
        "attributes": dict(event.attributes),
    }
    try:
        data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as error:
        raise ValueError(f"upload message {event.uri!r}: not serialisable: {error}") from None
    check = parse_upload(data, allowed_schemes=None)
    if check.failures:
        raise ValueError(check.failures[0].message)
    return data


# -- trapline.upload/1 -----------------------------------------------------------------------


def _parse_v1(
    document: dict[str, Any],
    source: str | None,
    key: bytes | None,
    schemes: frozenset[str] | set[str] | None,
) -> ParsedUpload:
    schema = document["schema"]
    if schema != SCHEMA_V1:
        raise _Invalid(
            "unknown_schema",
            f"schema {_short(schema)} is not supported; this worker reads {SCHEMA_V1!r} "
            "(upgrade the worker, or have the producer send the supported version)",
        )
    for name in ("uri", "deployment_id", "uploaded_at"):
        if name not in document:
            raise _Invalid("invalid_field", f"field '{name}' is missing")
    uri = _uri(document["uri"], "uri", schemes)
    try:
        deployment_id = _identifier(document["deployment_id"], "deployment_id")
        media_id = _optional(document.get("media_id"), lambda v: _identifier(v, "media_id"))
        timestamp = _optional(document.get("timestamp"), lambda v: _timestamp(v, "timestamp"))
        sha256 = _optional(document.get("sha256"), lambda v: _sha256(v, "sha256"))
        uploaded_at = _timestamp(document["uploaded_at"], "uploaded_at")
        attributes = _attributes(document.get("attributes"))
        _media_name(uri, "uri")
        if key is not None and key != deployment_id.encode("utf-8"):
            raise _Invalid(
                "key_mismatch",
                f"message key {_short(key)} is not the deployment_id {deployment_id!r}; key "
                "upload messages by deployment_id so repeats of a photo share a partition",
            )
    except _Invalid as error:
        error.uri = uri
        error.deployment_id = _identifier_or_none(document.get("deployment_id"))
        error.media_id = _identifier_or_none(document.get("media_id"))
        raise
    ref = MediaRef(uri, deployment_id, media_id, timestamp, source)
    return ParsedUpload(ref, uploaded_at, sha256, attributes)


def _identifier_or_none(value: Any) -> str | None:
    try:
        return _identifier(value, "id")
    except _Invalid:
        return None


# -- S3 / MinIO / Ceph bucket notifications ----------------------------------------------------


def _parse_s3(
    document: dict[str, Any],
    source: str | None,
    pattern: re.Pattern[str],
    schemes: frozenset[str] | set[str] | None,
    raw: bytes | None,
    result: ParseResult,
) -> None:
    records = document["Records"]
    if not isinstance(records, list) or not records:
        raise _Invalid(
            "invalid_field", f"field 'Records' must be a non-empty list, got {_json_type(records)}"
        )
    if len(records) > MAX_RECORDS:
        raise _Invalid(
            "invalid_field",
            f"field 'Records' has {len(records):,} entries (at most {MAX_RECORDS:,})",
        )
    for index, record in enumerate(records):
        where = f"Records[{index}]"
        try:
            event = _parse_s3_record(record, where, source, pattern, schemes, result)
        except _Invalid as error:
            result.failures.append(_failure(error, source, raw))
        else:
            if event is not None:
                result.events.append(event)


def _parse_s3_record(
    record: Any,
    where: str,
    source: str | None,
    pattern: re.Pattern[str],
    schemes: frozenset[str] | set[str] | None,
    result: ParseResult,
) -> ParsedUpload | None:
    if not isinstance(record, dict):
        raise _Invalid("invalid_field", f"{where} must be an object, got {_json_type(record)}")
    name = _string(record.get("eventName"), f"{where}.eventName", 256)
    s3 = _object(record.get("s3"), f"{where}.s3")
    bucket = _string(
        _object(s3.get("bucket"), f"{where}.s3.bucket").get("name"), f"{where}.s3.bucket.name", 255
    )
    encoded_key = _string(
        _object(s3.get("object"), f"{where}.s3.object").get("key"),
        f"{where}.s3.object.key",
        3 * MAX_S3_KEY_BYTES,
    )
    try:
        # Notifications URL-encode the key, spaces as '+' (AWS and MinIO alike).
        object_key = unquote_plus(encoded_key, errors="strict")
    except UnicodeDecodeError:
        raise _Invalid(
            "invalid_field", f"{where}.s3.object.key {_short(encoded_key)} is not URL-encoded UTF-8"
        ) from None
    label = f"s3://{bucket}/{object_key}"
    if not name.removeprefix("s3:").startswith("ObjectCreated:"):
        result.ignored.append(
            f"{_where(source)} {where}: {name} for {_short(label)} ignored (only ObjectCreated is processed)"
        )
        return None
    if object_key.endswith("/"):
        result.ignored.append(
            f"{_where(source)} {where}: {_short(label)} is a folder marker, ignored"
        )
        return None
    if not object_key or len(object_key.encode("utf-8", errors="replace")) > MAX_S3_KEY_BYTES:
        raise _Invalid(
            "invalid_field", f"{where}.s3.object.key must be 1 to {MAX_S3_KEY_BYTES} bytes"
        )
    uri = _uri(label, f"{where}.s3 (bucket + key)", schemes)
    deployment = None
    try:
        match = pattern.search(object_key)
        deployment = match.group("deployment") if match else None
        if not deployment:
            raise _Invalid(
                "no_deployment",
                f"{where}: object key {_short(object_key)} does not match the deployment "
                f"pattern {pattern.pattern!r}; upload under DEPLOYMENT/... or change the pattern",
            )
        deployment_id = _identifier(
            deployment, f"{where}: deployment from key {_short(object_key)}"
        )
        _media_name(uri, f"{where}.s3.object.key")
        event_time = record.get("eventTime")
        uploaded_at = None if event_time is None else _timestamp(event_time, f"{where}.eventTime")
    except _Invalid as error:
        error.uri = uri
        error.deployment_id = _identifier_or_none(deployment)
        raise
    return ParsedUpload(MediaRef(uri, deployment_id, None, None, source), uploaded_at)


# -- field checks ------------------------------------------------------------------------------


def _load_json(raw: bytes | None, max_bytes: int) -> Any:
    if not raw:
        raise _Invalid(
            "empty_event", "message has no value (null or empty); expected upload message JSON"
        )
    if len(raw) > max_bytes:
        raise _Invalid(
            "too_large", f"message is {len(raw):,} bytes; upload messages are at most {max_bytes:,}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Invalid(
            "malformed_json", f"message is not UTF-8 ({error.reason} at byte {error.start})"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise _Invalid("malformed_json", "message JSON is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, duplicate keys, NaN, huge integers
        raise _Invalid(
            "malformed_json", f"message is not valid JSON: {_short(str(error), 200)}"
        ) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r} (ambiguous: which one is meant?)")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _optional(value: Any, check: Any) -> Any:
    return None if value is None else check(value)


def _string(value: Any, name: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise _Invalid("invalid_field", f"field '{name}' must be a string, got {_json_type(value)}")
    if not value or len(value) > max_chars:
        raise _Invalid(
            "invalid_field", f"field '{name}' must be 1 to {max_chars} characters, got {len(value)}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(
            "invalid_field", f"field '{name}' contains a lone surrogate (not valid Unicode)"
        ) from None
    return value


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(
            "invalid_field", f"field '{name}' must be an object, got {_json_type(value)}"
        )
    return value


def _identifier(value: Any, name: str) -> str:
    text = _string(value, name, MAX_ID_CHARS)
    if not ID_PATTERN.fullmatch(text):
        raise _Invalid(
            "invalid_field",
            f"field '{name}' is {_short(text)}; ids are letters, digits and - _ . : "
            "(starting with a letter or digit), since they name files",
        )
    return text


def _uri(value: Any, name: str, schemes: frozenset[str] | set[str] | None) -> str:
    uri = _string(value, name, MAX_URI_CHARS)
    if _CONTROL.search(uri):
        raise _Invalid("invalid_field", f"field '{name}' contains control characters")
    try:
        parts = urlsplit(uri)
    except ValueError as error:
        raise _Invalid("invalid_field", f"field '{name}' is not a URL: {error}") from None
    scheme = parts.scheme.lower()
    if not scheme or "://" not in uri:
        raise _Invalid(
            "invalid_field",
            f"field '{name}' {_short(uri)} needs a scheme, e.g. s3://bucket/key.jpg or file:///path.jpg",
        )
    if schemes is not None and scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        raise _Invalid(
            "invalid_field",
            f"field '{name}' scheme {scheme!r} is not allowed by this worker (allowed: {allowed})",
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _Invalid(
                "invalid_field",
                f"field '{name}' {_short(uri)}: file URLs must be absolute, file:///path",
            )
    elif not parts.netloc or parts.path in ("", "/"):
        raise _Invalid(
            "invalid_field", f"field '{name}' {_short(uri)} needs a bucket and an object key"
        )
    if uri.endswith("/"):
        raise _Invalid("invalid_field", f"field '{name}' {_short(uri)} names a folder, not a photo")
    return uri


def _media_name(uri: str, name: str) -> None:
    """A photo or video by its name, as in folder runs: a JPEG named `trap.html` is refused
    here, so no later reader (the review screen, a browser) can take it for a page."""
    extension = posixpath.splitext(uri)[1].lower()
    if extension not in MEDIA_EXTENSIONS:
        raise _Invalid(
            "unsupported_type",
            f"field '{name}' {_short(uri)}: extension {_short(extension) if extension else '(none)'} "
            f"is not a supported photo or video type ({', '.join(sorted(MEDIA_EXTENSIONS))})",
        )


def _timestamp(value: Any, name: str) -> datetime:
    text = _string(value, name, 64)
    match = _ISO_PATTERN.fullmatch(text)
    if not match:
        raise _Invalid(
            "invalid_field",
            f"field '{name}' {_short(text)} is not ISO 8601, e.g. 2024-05-01T10:00:00+02:00",
        )
    if match["offset"] is None:
        raise _Invalid(
            "invalid_field",
            f"field '{name}' {_short(text)} has no UTC offset; add one (e.g. +02:00 or Z)"
            + (" or send null to use the photo's EXIF time" if name == "timestamp" else ""),
        )
    offset = match["offset"]
    if offset in ("Z", "z"):
        offset = "+00:00"
    elif len(offset) == 3:
        offset += ":00"
    elif ":" not in offset:
        offset = f"{offset[:3]}:{offset[3:]}"
    time = match["time"] if len(match["time"]) == 8 else match["time"] + ":00"
    fraction = f".{(match['frac'] + '000000')[:6]}" if match["frac"] else ""
    try:
        parsed = datetime.fromisoformat(f"{match['date']}T{time}{fraction}{offset}")
        parsed.astimezone(timezone.utc)  # the pipeline converts; refuse what cannot be converted
    except (ValueError, OverflowError) as error:
        raise _Invalid(
            "invalid_field", f"field '{name}' {_short(text)} is not a valid time: {error}"
        ) from None
    return parsed


def _sha256(value: Any, name: str) -> str:
    if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value):
        raise _Invalid(
            "invalid_field", f"field '{name}' must be 64 hex digits or null, got {_short(value)}"
        )
    return value.lower()


def _attributes(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    attributes = _object(value, "attributes")
    if len(attributes) > MAX_ATTRIBUTES:
        raise _Invalid(
            "invalid_field",
            f"field 'attributes' has {len(attributes)} entries (at most {MAX_ATTRIBUTES})",
        )
    for key, item in attributes.items():
        _string(key, "attributes key", MAX_ATTRIBUTE_KEY_CHARS)
        name = f"attributes.{key[:40]}"
        if not isinstance(item, str):
            raise _Invalid(
                "invalid_field", f"field '{name}' must be a string, got {_json_type(item)}"
            )
        if item:  # empty values are fine
            _string(item, name, MAX_ATTRIBUTE_VALUE_CHARS)
    return dict(attributes)


# -- messages ----------------------------------------------------------------------------------


def _failure(error: _Invalid, source: str | None, raw: bytes | None) -> Failure:
    return Failure(
        uri=error.uri or source or "(upload message)",
        deployment_id=error.deployment_id,
        media_id=error.media_id,
        stage="event",
        kind=error.kind,
        message=f"upload message {_where(source)}: {error.message}",
        source=source,
        raw_event=raw,
    )


def _where(source: str | None) -> str:
    return source or "(no source)"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
