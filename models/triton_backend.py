"""Triton backends: the service mode's model server, behind the same protocols as ONNX Runtime.

    detector = TritonDetector("grpc://triton:8001", "trapline_detector")
    raw = detector.detect(batch)                  # (B, S, S, 3) uint8 -> raw rows
    raws = detector.detect_many([b1, b2, b3])     # several batches in flight at once

Requests carry uint8 NHWC, as `models/backend.py` hands them over; the served graph converts
on the server's device (`models/triton_repository.py`). The URL scheme picks the protocol:
`grpc://` (default when there is none, `grpcs://` with TLS) or `http://` / `https://`.

At construction the client checks, and fails naming the model and the URL, that the server is
live, the model is ready, and its config (read from the server) takes uint8 (S, S, 3) and
answers float32 in the layout and size the spec needs. The spec (name, version, labels) comes
from the config's `trapline_spec` parameter unless one is passed, in which case both must agree.

Calls retry with exponential backoff while the server answers UNAVAILABLE (restarting, queue
full, not reachable), bounded by `retries`; each call has a `timeout_s`. Whatever
`trapline/errors.py` calls an outage (also a timeout, INTERNAL) ends as `TritonUnavailableError`
(a `BackendUnavailable`: the batch waits), anything else as `TritonError` (the batch fails). Batches larger than the
model's max_batch_size are split. `detect_many` / `classify_many` keep up to `max_in_flight`
requests outstanding (a thread pool over the thread-safe gRPC client, or one HTTP client per
thread), so Triton's dynamic batcher can merge them and the device stays busy while the caller
prepares the next batches.

Over 400 lines on purpose: it is the only module that speaks Triton (KServe v2 over gRPC), with its
batching, retries and in-flight limit.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from trapline.errors import BackendUnavailable, is_retryable
from trapline.models.backend import ClassifierBackend, DetectorBackend
from trapline.models.contracts import ClassifierSpec, DetectorSpec, ModelContractError

SPEC_PARAMETER = "trapline_spec"  # as written by models/triton_repository.py
Spec = TypeVar("Spec", DetectorSpec, ClassifierSpec)


class TritonError(RuntimeError):
    """Triton answered with an error, or not at all; the message names the model and URL."""


class TritonUnavailableError(TritonError, BackendUnavailable):
    """The server could not be reached (or kept answering UNAVAILABLE) through all retries."""


@dataclass(frozen=True)
class TritonOptions:
    """How a backend talks to Triton."""

    timeout_s: float = 30.0  # one request (or readiness call), seconds
    retries: int = 3  # further attempts after UNAVAILABLE / connection refused
    backoff_s: float = 0.1  # first retry delay; doubles per attempt (with jitter)
    backoff_max_s: float = 2.0  # longest single delay between attempts
    max_in_flight: int = 4  # requests outstanding at once in detect_many / classify_many


class _TritonModel:
    """One Triton model: connection, readiness and contract checks, retrying inference."""

    def __init__(self, url: str, model_name: str, options: TritonOptions):
        self.url, self.model_name, self.options = url, model_name, options
        self.protocol, self.address, self.ssl = parse_url(url)
        self._local = threading.local()
        self._shared = self._new_client() if self.protocol == "grpc" else None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._module = _client_module(self.protocol)
        self.input_name, self.output_name = "", ""
        try:
            self._check_ready()
            self.config = self._config()
        except Exception:
            self.close()
            raise
        self.max_batch_size = int(self.config.get("max_batch_size", 0))

    # -- connection ---------------------------------------------------------------------------

    def _new_client(self) -> Any:
        module = _client_module(self.protocol)
        if self.protocol == "grpc":
            return module.InferenceServerClient(
                self.address, ssl=self.ssl, channel_args=_grpc_channel_args(module)
            )
        timeout = self.options.timeout_s
        return module.InferenceServerClient(
            self.address, ssl=self.ssl, connection_timeout=timeout, network_timeout=timeout
        )

    def _client(self) -> Any:
        if self._shared is not None:  # the gRPC client is thread-safe
            return self._shared
        client = getattr(self._local, "client", None)
        if client is None:  # the HTTP client is not: one per thread
            client = self._local.client = self._new_client()
        return client

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(client)`, retrying while the server is unavailable; errors name model + URL."""
        opts = self.options
        for attempt in range(opts.retries + 1):
            try:
                return fn(self._client())
            except Exception as error:  # tritonclient raises its own and transport types
                if not is_retryable(error):  # a bad request or model: the batch fails
                    raise TritonError(
                        f"Triton {what} for model {self.model_name!r} at {self.url} failed: "
                        f"{_describe(error)}"
                    ) from None
                if attempt == opts.retries or not _retry_now(error):
                    # An outage (trapline/errors.py): the caller waits and retries the batch.
                    raise TritonUnavailableError(
                        f"Triton at {self.url} unavailable for {what} of model "
                        f"{self.model_name!r} after {attempt + 1} attempts: "
                        f"{_describe(error)} (is the server running and the URL right?)"
                    ) from None
                delay = min(opts.backoff_s * 2**attempt, opts.backoff_max_s)
                time.sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _timeout_kw(self) -> dict[str, float]:
        # gRPC takes a per-call deadline; the HTTP client was given its timeouts at creation.
        return {"client_timeout": self.options.timeout_s} if self.protocol == "grpc" else {}

    # -- readiness and contract ---------------------------------------------------------------

    def _check_ready(self) -> None:
        live = self._call("liveness check", lambda c: c.is_server_live(**self._timeout_kw()))
        if not live:
            raise TritonUnavailableError(f"Triton at {self.url} is up but not live")
        ready = self._call(
            "readiness check", lambda c: c.is_model_ready(self.model_name, **self._timeout_kw())
        )
        if ready:
            return
        index = self._call(
            "repository index", lambda c: c.get_model_repository_index(**self._index_kw())
        )
        models = index.get("models", []) if isinstance(index, dict) else index
        listed = (
            ", ".join(f"{m.get('name')} ({m.get('state') or 'UNLOADED'})" for m in models)
            or "no models"
        )
        raise ModelContractError(
            f"model {self.model_name!r} is not ready on Triton at {self.url}; the server has: "
            f"{listed}. Build the repository with `trapline models build-repo`, or set the "
            "Triton model name in the settings."
        )

    def _index_kw(self) -> dict[str, Any]:
        return {"as_json": True, **self._timeout_kw()} if self.protocol == "grpc" else {}

    def _config(self) -> dict[str, Any]:
        if self.protocol == "grpc":
            answer = self._call(
                "config read",
                lambda c: c.get_model_config(self.model_name, as_json=True, **self._timeout_kw()),
            )
            return answer.get("config", answer)
        return self._call("config read", lambda c: c.get_model_config(self.model_name))

    def server_spec(self) -> str | None:
        parameters = self.config.get("parameters", {})
        return parameters.get(SPEC_PARAMETER, {}).get("string_value")

    def resolve_spec(self, spec: Spec | None, kind: type[Spec]) -> Spec:
        """The spec the server declares, checked against the one given (if any)."""
        text = self.server_spec()
        served = _spec_from_json(kind, text, self.model_name) if text else None
        if spec is None and served is None:
            raise ModelContractError(
                f"model {self.model_name!r} on Triton at {self.url} has no {SPEC_PARAMETER!r} "
                "parameter naming it; build its repository with `trapline models build-repo` "
                "or pass the model's spec"
            )
        if spec is not None and served is not None:
            for key in _identity_fields(kind):
                if getattr(spec, key) != getattr(served, key):
                    raise ModelContractError(
                        f"model {self.model_name!r} on Triton at {self.url} serves "
                        f"{key}={getattr(served, key)!r} but the local sidecar says "
                        f"{getattr(spec, key)!r}; point the settings at the same model"
                    )
        return spec if spec is not None else served  # type: ignore[return-value]

    def check_io(self, side: int, output_ok: Callable[[list[int]], bool], expected: str) -> None:
        """One uint8 (side, side, 3) input and one float32 output whose dims pass `output_ok`."""
        inputs, outputs = self.config.get("input", []), self.config.get("output", [])
        where = f"model {self.model_name!r} on Triton at {self.url}"
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelContractError(
                f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; expected one each"
            )
        model_input, model_output = inputs[0], outputs[0]
        dims = [int(d) for d in model_input.get("dims", [])]
        if self.max_batch_size == 0:
            raise ModelContractError(f"{where} has max_batch_size 0; Trapline sends batches")
        if model_input.get("data_type") != "TYPE_UINT8" or not _dims_match(dims, [side, side, 3]):
            raise ModelContractError(
                f"{where} takes {model_input.get('data_type')} {dims}; the spec needs "
                f"TYPE_UINT8 [{side}, {side}, 3] (uint8 NHWC; rebuild with `trapline models build-repo`)"
            )
        out_dims = [int(d) for d in model_output.get("dims", [])]
        if model_output.get("data_type") != "TYPE_FP32" or not output_ok(out_dims):
            raise ModelContractError(
                f"{where} answers {model_output.get('data_type')} {out_dims}; the spec needs "
                f"TYPE_FP32 {expected}"
            )
        self.input_name, self.output_name = model_input["name"], model_output["name"]

    # -- inference ----------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """One batch (split into max_batch_size requests, sent concurrently) -> output."""
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if batch.ndim != 4:
            raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got shape {batch.shape}")
        if len(batch) <= self.max_batch_size:
            return self._infer_one(batch)
        step = self.max_batch_size
        parts = self.map(self._infer_one, [batch[i : i + step] for i in range(0, len(batch), step)])
        return np.concatenate(parts)

    def map(self, fn: Callable[[np.ndarray], np.ndarray], batches: Sequence[np.ndarray]) -> list:
        if len(batches) <= 1:
            return [fn(b) for b in batches]
        return list(self._executor().map(fn, batches))

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max(1, self.options.max_in_flight),
                    thread_name_prefix=f"triton-{self.model_name}",
                )
            return self._pool

    def _infer_one(self, batch: np.ndarray) -> np.ndarray:
        module = self._module

        def send(client: Any) -> np.ndarray:
            request = module.InferInput(self.input_name, list(batch.shape), "UINT8")
            if self.protocol == "grpc":
                request.set_data_from_numpy(batch)
                wanted = module.InferRequestedOutput(self.output_name)
            else:
                request.set_data_from_numpy(batch, binary_data=True)
                wanted = module.InferRequestedOutput(self.output_name, binary_data=True)
            result = client.infer(
                self.model_name, [request], outputs=[wanted], **self._timeout_kw()
            )
            return result.as_numpy(self.output_name)

        output = self._call("inference", send)
        if output is None or len(output) != len(batch):
            raise TritonError(
                f"model {self.model_name!r} at {self.url} answered "
                f"{None if output is None else output.shape} for a batch of {len(batch)}"
            )
        return output

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if self._shared is not None:
            self._shared.close()


class TritonDetector:
    """DetectorBackend on Triton. `detect` returns raw rows in `spec.layout`: with the NMS the
    repository builder puts in the graph, each image's best `max_det` rows, zero-padded."""

    def __init__(
        self,
        url: str,
        model_name: str = "trapline_detector",
        spec: DetectorSpec | None = None,
        options: TritonOptions | None = None,
    ):
        self._model = _TritonModel(url, model_name, options or TritonOptions())
        try:
            self.spec = self._model.resolve_spec(spec, DetectorSpec)
            width = 4 + len(self.spec.classes) + (self.spec.layout == "yolov5")
            if self.spec.layout == "yolov5":
                ok, expected = (lambda d: len(d) == 2 and d[1] == width), f"[N, {width}]"
            else:
                ok, expected = (lambda d: len(d) == 2 and d[0] == width), f"[{width}, N]"
            self._model.check_io(self.spec.input_size, ok, expected)
        except Exception:
            self._model.close()
            raise

    def detect(self, batch: np.ndarray) -> np.ndarray:
        return self._model.infer(batch)

    def detect_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Raw output per batch, in order, with up to `max_in_flight` requests outstanding."""
        return self._model.map(self._model.infer, batches)

    def close(self) -> None:
        self._model.close()

    def __enter__(self) -> TritonDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TritonClassifier:
    """ClassifierBackend on Triton: (B, C, C, 3) uint8 crops -> (B, len(labels)) logits."""

    def __init__(
        self,
        url: str,
        model_name: str = "trapline_classifier",
        spec: ClassifierSpec | None = None,
        options: TritonOptions | None = None,
    ):
        self._model = _TritonModel(url, model_name, options or TritonOptions())
        try:
            self.spec = self._model.resolve_spec(spec, ClassifierSpec)
            n = len(self.spec.labels)
            self._model.check_io(self.spec.input_size, lambda d: d == [n], f"[{n}]")
        except Exception:
            self._model.close()
            raise

    def classify(self, batch: np.ndarray) -> np.ndarray:
        return self._model.infer(batch)

    def classify_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Logits per batch, in order, with up to `max_in_flight` requests outstanding."""
        return self._model.map(self._model.infer, batches)

    def close(self) -> None:
        self._model.close()

    def __enter__(self) -> TritonClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_backends(
    backend: Literal["onnx", "triton"],
    *,
    detector_model: Path | None = None,
    classifier_model: Path | None = None,
    threads: int = 1,
    triton_url: str = "grpc://127.0.0.1:8001",
    triton_timeout_s: float = 30.0,
    triton_detector_model: str = "trapline_detector",
    triton_classifier_model: str = "trapline_classifier",
    triton_max_in_flight: int = 4,
    triton_retries: int = 3,
) -> tuple[DetectorBackend, ClassifierBackend]:
    """Detector and classifier backends for the given settings values.

    `onnx` runs `detector_model` / `classifier_model` in-process; either may be a catalogue
    name (`mdv5a`, `deepfaune-v1.4`: `models/catalogue.py`), fetched and imported on first use
    (`models/fetch.py`). `triton` ignores those paths:
    the server's `trapline_spec` parameters say which models it serves, and that is what goes
    into the result rows (the path defaults point at the demo models, which a production
    server does not serve). Pass a spec to `TritonDetector` directly to pin a model.
    """
    if backend == "onnx":
        from trapline.models.fetch import resolve_model
        from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector

        if detector_model is None or classifier_model is None:
            raise ValueError("the onnx backend needs detector_model and classifier_model paths")
        detector_model = resolve_model(detector_model, "detector")  # a catalogue name: cached
        classifier_model = resolve_model(classifier_model, "classifier")  # ONNX, fetched once
        return OnnxDetector(detector_model, threads), OnnxClassifier(classifier_model, threads)
    if backend != "triton":
        raise ValueError(f"model_backend must be 'onnx' or 'triton', not {backend!r}")
    options = TritonOptions(
        timeout_s=triton_timeout_s, retries=triton_retries, max_in_flight=triton_max_in_flight
    )
    detector = TritonDetector(triton_url, triton_detector_model, options=options)
    try:
        classifier = TritonClassifier(triton_url, triton_classifier_model, options=options)
    except Exception:
        detector.close()
        raise
    return detector, classifier


# --------------------------------------------------------------------------------------------


def parse_url(url: str) -> tuple[Literal["grpc", "http"], str, bool]:
    """'grpc://h:p' | 'grpcs://h:p' | 'http://h:p' | 'https://h:p' | 'h:p' -> protocol, h:p, TLS."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "grpc", url
    schemes: dict[str, tuple[Literal["grpc", "http"], bool]] = {
        "grpc": ("grpc", False), "grpcs": ("grpc", True),
        "http": ("http", False), "https": ("http", True),
    }  # fmt: skip
    if scheme not in schemes or not rest or "/" in rest.rstrip("/"):
        raise ValueError(
            f"Triton URL {url!r} is not grpc://host:port, grpcs://, http:// or https://host:port"
        )
    protocol, tls = schemes[scheme]
    return protocol, rest.rstrip("/"), tls


def _grpc_channel_args(module: Any) -> list[tuple[str, int]]:
    """tritonclient's defaults plus a short reconnect backoff: gRPC otherwise waits 1 s and
    more before it tries a server again, so a restarted Triton would fail retries that would
    have found it back."""
    size = getattr(module, "MAX_GRPC_MESSAGE_SIZE", 2**31 - 1)
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ModuleNotFoundError as missing:
        raise ModuleNotFoundError(
            f"the Triton backend needs tritonclient ({missing}): pip install 'tritonclient[grpc,http]'"
        ) from None
    return module


def _retry_now(error: Exception) -> bool:
    """Which outages are retried at once, inside the call: UNAVAILABLE (restarting, queue full,
    unreachable), refused connections and a model that is loading or unloading. Other outages
    (a timeout, INTERNAL) go straight to the caller, which waits before it retries the batch:
    retrying a slow request at once only adds load."""
    status = getattr(error, "status", None)
    code = str(status() if callable(status) else status or "")
    if "UNAVAILABLE" in code or code == "503":
        return True
    if isinstance(error, (ConnectionRefusedError, ConnectionResetError)):
        return True
    text = str(_describe(error))
    # While a model loads or unloads (server start, shutdown, a repository poll) Triton answers
    # NOT_FOUND "... has no available versions": a known model that is briefly not there. A
    # model that does not exist says "... is not found" instead, and is not retried.
    if "has no available versions" in text:
        return True
    return "Connection refused" in text or "failed to connect" in text.lower()


def _describe(error: Exception) -> str:
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    status = getattr(error, "status", None)
    code = status() if callable(status) else None
    return f"{code}: {text}" if code else f"{type(error).__name__}: {text}"


def _identity_fields(kind: type) -> tuple[str, ...]:
    if kind is DetectorSpec:
        return ("name", "version", "input_size", "layout", "classes")
    return ("name", "version", "input_size", "labels", "mean", "std")


def _spec_from_json(kind: type[Spec], text: str, model_name: str) -> Spec:
    """A spec from the sidecar JSON the repository builder put in the config."""
    try:
        raw = json.loads(text)
        known = {f.name for f in fields(kind)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
        values["version"] = str(values["version"])
        spec = kind(**values)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelContractError(
            f"model {model_name!r}: its {SPEC_PARAMETER!r} parameter is not a valid sidecar: {error}"
        ) from None
    if isinstance(spec, DetectorSpec) and spec.layout not in ("yolov5", "ultralytics"):
        raise ModelContractError(f"model {model_name!r}: unknown layout {spec.layout!r}")
    return spec


def _dims_match(dims: list[int], expected: list[int]) -> bool:
    return len(dims) == len(expected) and all(d in (e, -1) for d, e in zip(dims, expected))
