"""Which errors are an outage (wait and retry) and which are the input's fault (a failures row).

A stage that touches storage, the broker or a model meets two kinds of errors, and mixing them
up loses data or stalls the flow:

- **retryable**, an outage: timeouts, HTTP 5xx and throttling (S3's 503 SlowDown), connections
  reset or refused, Triton's UNAVAILABLE / INTERNAL / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED,
  a model that is still loading. Nothing is wrong with the photo: written as a failure it would
  be lost to the tables (and dead-lettered) although a retry a minute later would succeed. The
  batch waits instead (the stream puts the partition back, a folder run sleeps and retries).
- **permanent**, the input's fault: not found, access denied, undecodable, too large, refused
  by policy, anything not known to be transient. Retrying would stall the flow forever on one
  bad photo, so it becomes a failures row with its reason and the batch goes on.

`is_retryable` is the one place that decides; it follows the exception's cause chain because
the clients wrap each other (s3fs turns botocore's 503 into `OSError(EBUSY)` whose `__cause__`
is the `ClientError`; tritonclient wraps gRPC's status). An outage that leaves a stage is
raised as `StorageUnavailable` or `BackendUnavailable` (`OUTAGES`), never turned into a row.

Why at the package root: the stages, the model backends (models/triton_backend.py retries what
this calls an outage) and the run modes all ask it, so it sits below all three floors and
imports none of them.
"""

from __future__ import annotations

import errno


class BackendUnavailable(RuntimeError):
    """The model server cannot be reached (after its retries). Not the input's fault: the
    caller must retry the batch later, never turn its photos into failure rows."""


class StorageUnavailable(RuntimeError):
    """Storage (S3, a network disk) is unreachable or overloaded. Not the input's fault, like
    `BackendUnavailable` for the models: the caller retries the batch later."""


OUTAGES: tuple[type[BaseException], ...] = (StorageUnavailable, BackendUnavailable)

# Error numbers of an outage. EBUSY and EREMOTEIO are what s3fs makes of S3's 503 / SlowDown
# and 500 / InternalError; ESTALE is an NFS server that restarted.
_RETRYABLE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EAGAIN", "EBUSY", "ECONNABORTED", "ECONNREFUSED", "ECONNRESET", "EHOSTDOWN",
        "EHOSTUNREACH", "ENETDOWN", "ENETRESET", "ENETUNREACH", "ENOTCONN", "EPIPE",
        "EREMOTEIO", "ESTALE", "ETIMEDOUT",
    )
    if hasattr(errno, name)
)  # fmt: skip
# S3 error codes that mean "try again" (AWS's list of throttling and transient codes).
_RETRYABLE_S3_CODES = frozenset(
    {
        "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
        "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestLimitExceeded",
        "TooManyRequestsException", "BandwidthLimitExceeded", "OperationAborted",
        "RequestTimeoutException", "PriorRequestNotComplete", "EC2ThrottledException",
    }
)  # fmt: skip
# Triton (gRPC status names; the HTTP client gives the HTTP status instead).
_RETRYABLE_TRITON = frozenset(
    {"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}
)
# What Triton says about a known model while it loads or unloads (start, shutdown, a repository
# poll); an unknown model says "... is not found" instead and stays permanent.
_LOADING = ("has no available versions", "is not ready", "is loading")
_CONNECTION_TEXT = ("connection refused", "connection reset", "failed to connect", "socket closed")


def is_retryable(error: BaseException) -> bool:
    """True for an outage (wait and retry the batch), False for the input's fault (a row).

    Unknown errors are permanent: a retry loop over a photo that can never succeed would stall
    its partition for good, while a failures row keeps the photo findable and the flow going.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _verdict(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def is_storage_error(error: BaseException) -> bool:
    """An error raised by a storage client (the OS, fsspec, s3fs, botocore, aiohttp), as
    opposed to a bug: a permanent one is a failures row, a bug is raised as it is."""
    module = type(error).__module__.split(".")[0]
    return isinstance(error, OSError) or module in _STORAGE_MODULES


_STORAGE_MODULES = frozenset(
    {"botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs"}
)


def describe(error: BaseException) -> str:
    """A one-line reason that names the error's type (and status, for Triton)."""
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    status = _triton_status(error)
    return f"{type(error).__name__}{f' {status}' if status else ''}: {text}"


def _verdict(error: BaseException) -> bool | None:
    """This exception's own verdict, or None if only its cause can tell."""
    if isinstance(error, OUTAGES):
        return True
    for check in (_s3_verdict, _triton_verdict, _http_verdict):
        verdict = check(error)
        if verdict is not None:
            return verdict
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):  # reset, refused, aborted, timed out
        return True
    if isinstance(error, OSError):
        if error.errno in _RETRYABLE_ERRNOS:
            return True
        return None if error.errno in (None, errno.EIO) else False  # EIO: ask the cause
    text = str(error).lower()
    if any(part in text for part in _CONNECTION_TEXT):  # clients that lose the errno on the way
        return True
    return None


def _s3_verdict(error: BaseException) -> bool | None:
    """botocore: ClientError by code and HTTP status; transport errors are outages."""
    try:
        from botocore import exceptions as boto
    except ImportError:  # no S3 support installed
        return None
    if isinstance(error, boto.ClientError):
        response = getattr(error, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _RETRYABLE_S3_CODES or code in ("500", "502", "503", "504"):
            return True
        return isinstance(status, int) and (status >= 500 or status == 429)
    if isinstance(error, (boto.ConnectionError, boto.HTTPClientError, boto.IncompleteReadError)):
        return True  # endpoint unreachable, connect/read timeout, connection closed mid-body
    return None


def _http_verdict(error: BaseException) -> bool | None:
    """aiohttp (under s3fs and fsspec's HTTP): connection and payload errors are outages; a
    response error by its status."""
    try:
        import aiohttp
    except ImportError:
        return None
    if isinstance(error, aiohttp.ClientResponseError):
        return error.status >= 500 or error.status in (408, 429)
    if isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return True
    return None


def _triton_status(error: BaseException) -> str:
    status = getattr(error, "status", None)
    try:
        return str(status() if callable(status) else status or "")
    except Exception:  # noqa: BLE001 - an unrelated `status` attribute
        return ""


def _triton_verdict(error: BaseException) -> bool | None:
    """tritonclient's InferenceServerException: gRPC status ("StatusCode.UNAVAILABLE") or the
    HTTP status ("503"); a known model that is loading is an outage too."""
    if type(error).__name__ != "InferenceServerException":
        return None
    status = _triton_status(error)
    name = status.removeprefix("StatusCode.")
    text = describe(error).lower()
    if name in _RETRYABLE_TRITON or any(part in text for part in _LOADING):
        return True
    if status.isdigit():
        return int(status) >= 500 or int(status) == 429
    if any(part in text for part in _CONNECTION_TEXT):  # the HTTP client's socket errors
        return True
    return False
