"""The one classification of errors (trapline/errors.py), on the exception objects the real
clients raise: botocore, s3fs's translation of them, the OS, aiohttp, tritonclient."""

from __future__ import annotations

import errno
import socket

import aiohttp
import numpy as np
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from s3fs.errors import translate_boto_error
from tritonclient.utils import InferenceServerException

from trapline.errors import BackendUnavailable, StorageUnavailable, is_retryable, is_storage_error
from trapline.models.contracts import ClassifierSpec, DetectorSpec
from trapline.pipelines.flow import PhotoPipeline
from trapline.pipelines.source import read_bytes
from trapline.pipelines.types import MediaRef, StageError
from trapline.services.settings import Settings


def client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    """What botocore raises for an S3 error answer (the parsed XML and the HTTP status)."""
    response = {
        "Error": {"Code": code, "Message": f"{code} from the server"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("SlowDown", 503, True),
        ("ServiceUnavailable", 503, True),
        ("InternalError", 500, True),
        ("RequestTimeout", 400, True),
        ("ThrottlingException", 400, True),
        ("BadGateway", 502, True),  # an unknown code, known by its status
        ("TooManyRequests", 429, True),
        ("NoSuchKey", 404, False),
        ("NoSuchBucket", 404, False),
        ("AccessDenied", 403, False),
        ("InvalidRange", 416, False),
        ("EntityTooLarge", 400, False),
    ],
)
def test_s3_answers_retryable_by_code_and_status_as_botocore_and_s3fs_raise_them(
    code: str, status: int, retryable: bool
) -> None:
    error = client_error(code, status)
    assert is_retryable(error) is retryable
    # s3fs turns it into an OSError (EBUSY for SlowDown, EIO for unknown codes, FileNotFound...)
    # with the ClientError as its cause: the verdict must survive the translation.
    translated = translate_boto_error(error)
    assert isinstance(translated, OSError)
    assert is_retryable(translated) is retryable


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:9"),
    ],
    ids=type,
)
def test_botocore_transport_errors_are_retryable(error: Exception) -> None:
    assert is_retryable(error)


def test_missing_credentials_are_permanent() -> None:
    assert not is_retryable(NoCredentialsError())


@pytest.mark.parametrize(
    ("number", "retryable"),
    [
        (errno.ECONNRESET, True),
        (errno.ECONNREFUSED, True),
        (errno.ETIMEDOUT, True),
        (errno.EHOSTUNREACH, True),
        (errno.EPIPE, True),
        (errno.EBUSY, True),
        (errno.ESTALE, True),
        (errno.ENOENT, False),
        (errno.EACCES, False),
        (errno.EISDIR, False),
        (errno.ENOSPC, False),
        (errno.EIO, False),  # a bare EIO (a bad disk block): retrying would not help
    ],
    ids=lambda v: errno.errorcode.get(v, str(v)) if isinstance(v, int) else str(v),
)
def test_os_errors_by_errno(number: int, retryable: bool) -> None:
    error = OSError(number, "message")  # OSError picks the subclass (ConnectionResetError...)
    assert is_retryable(error) is retryable


def test_a_refused_connection_on_a_real_socket_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(OSError) as refused:
            socket.create_connection(("127.0.0.1", port), timeout=2)
    assert is_retryable(refused.value)


def test_aiohttp_errors_connection_and_5xx_retryable_4xx_permanent() -> None:
    assert is_retryable(aiohttp.ServerDisconnectedError())
    assert is_retryable(aiohttp.ClientPayloadError("response payload is not completed"))
    assert is_retryable(aiohttp.ServerTimeoutError("read timed out"))
    info = aiohttp.RequestInfo(url=None, method="GET", headers=None, real_url=None)  # type: ignore[arg-type]
    assert is_retryable(aiohttp.ClientResponseError(info, (), status=503))
    assert not is_retryable(aiohttp.ClientResponseError(info, (), status=404))


@pytest.mark.parametrize(
    ("status", "message", "retryable"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", True),
        ("StatusCode.INTERNAL", "trapline_detector: injected fault", True),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", True),
        ("StatusCode.RESOURCE_EXHAUSTED", "queue is full", True),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'd' has no available versions", True),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found", False),
        ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'images'", False),
        ("503", "server unavailable", True),
        ("400", "unexpected datatype", False),
    ],
)
def test_triton_status_codes(status: str, message: str, retryable: bool) -> None:
    assert is_retryable(InferenceServerException(msg=message, status=status)) is retryable


def test_triton_client_without_a_server_raises_a_retryable_error() -> None:
    import tritonclient.grpc as grpcclient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{probe.getsockname()[1]}")
        with pytest.raises(InferenceServerException) as error:
            client.is_server_live(client_timeout=2)
    client.close()
    assert is_retryable(error.value)


def test_outage_types_are_retryable_and_unknown_errors_permanent() -> None:
    assert is_retryable(StorageUnavailable("s3 away"))
    assert is_retryable(BackendUnavailable("triton away"))
    assert not is_retryable(ValueError("cannot identify image file"))
    assert not is_storage_error(ValueError("a bug"))
    assert is_storage_error(client_error("NoSuchKey", 404))


def test_read_bytes_keeps_permanent_errors_as_stage_errors(tmp_path) -> None:
    with pytest.raises(StageError) as missing:
        read_bytes(str(tmp_path / "nope.jpg"), 1000, roots=[])
    assert missing.value.kind == "missing"
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(StageError) as folder:
        read_bytes(str(tmp_path / "folder.jpg"), 1000, roots=[])
    assert folder.value.kind == "io_error"


class _FakeDetectorRaising:
    """A fake: a real Triton answering INTERNAL is in tests/reliability/test_fault_retryable.py;
    this one pins down what `process` does with each class of error, in-process."""

    spec = DetectorSpec(name="fake", version="1", input_size=32)

    def __init__(self, error: Exception):
        self.error = error

    def detect(self, batch: np.ndarray) -> np.ndarray:
        raise self.error


class _UnusedClassifier:
    spec = ClassifierSpec(name="fake", version="1", input_size=32, labels=("a",))

    def classify(self, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("not reached")


def _one_photo(tmp_path) -> list[MediaRef]:
    from support.stream_workers import make_photos

    (photo,) = make_photos(tmp_path, 1, deployments=1)
    return [MediaRef(uri=str(photo), deployment_id="dep-0")]


def test_process_fake_backend_retryable_error_raises_permanent_is_a_failure_row(tmp_path) -> None:
    refs = _one_photo(tmp_path)
    settings = Settings()
    outage = InferenceServerException(msg="injected", status="StatusCode.INTERNAL")
    pipeline = PhotoPipeline(settings.stage_options(), _FakeDetectorRaising(outage), _UnusedClassifier())  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable):
        pipeline.process(refs)
    bad = InferenceServerException(msg="bad shape", status="StatusCode.INVALID_ARGUMENT")
    pipeline = PhotoPipeline(settings.stage_options(), _FakeDetectorRaising(bad), _UnusedClassifier())  # type: ignore[arg-type]
    output = pipeline.process(refs)
    assert [(f.stage, f.kind) for f in output.failures] == [("detect", "model_error")]
