"""Triton serving: the repository builder's uint8 graphs, a real tritonserver (CPU, python
backend, from `scripts/setup_triton.sh`), and the Triton backends against ONNX Runtime.

The Triton tests skip only when the Triton venv does not exist (setup script not run); a venv
that exists but is broken fails them.
"""

from __future__ import annotations

import json
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tritonclient.grpc import model_config_pb2

from trapline.models.contracts import (
    ModelContractError,
    load_classifier_spec,
    load_detector_spec,
)
from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector
from trapline.models.triton_backend import (
    TritonClassifier,
    TritonDetector,
    TritonOptions,
    TritonUnavailableError,
    make_backends,
    parse_url,
)
from trapline.models.triton_repository import (
    RepositoryOptions,
    build_repository,
    wrap_detector,
)
from trapline.models.yolo import postprocess
from trapline.pipelines.letterbox import Letterbox
from trapline.services.devstack.tansu import ServerStartError, free_port
from trapline.services.devstack.triton import (
    TritonSetupError,
    default_venv,
    start_triton,
    triton_install,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "demo"
PHOTOS = REPO / "tests" / "data" / "real_photos"  # real Reconyx frames (Camtrap DP example, MIT)
SMALL_BATCHES = RepositoryOptions(max_batch_size=8, preferred_batch_sizes=(4, 8))


# --------------------------------------------------------------------------------------------
# Models and inputs


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> tuple[Path, Path]:
    """The demo models; tiny seeded stand-ins with the same contracts if they are not built."""
    detector, classifier = DEMO / "detector.onnx", DEMO / "classifier.onnx"
    if all(p.exists() and p.with_suffix(".json").exists() for p in (detector, classifier)):
        return detector, classifier
    out = tmp_path_factory.mktemp("standin-models")
    return _standin_detector(out / "detector.onnx"), _standin_classifier(out / "classifier.onnx")


@pytest.fixture(scope="session")
def canvases(model_files) -> np.ndarray:
    """Letterboxed detector inputs: real Reconyx photos and noise."""
    side = load_detector_spec(model_files[0]).input_size
    photos = sorted(PHOTOS.rglob("*.JPG"))
    rng = np.random.default_rng(7)
    batch = rng.integers(0, 256, (len(photos) + 3, side, side, 3), dtype=np.uint8)
    for i, path in enumerate(photos):
        with Image.open(path) as image:
            image.draft("RGB", (side * 2, side * 2))
            image = image.convert("RGB")
            Letterbox.fit(image.width, image.height, side).draw(image, batch[i])
    return batch


@pytest.fixture(scope="session")
def crops(model_files, canvases) -> np.ndarray:
    side = load_classifier_spec(model_files[1]).input_size
    rng = np.random.default_rng(3)
    out = []
    for canvas in canvases:
        x, y = rng.integers(0, canvas.shape[0] // 2, 2)
        square = canvas[y : y + canvas.shape[0] // 2, x : x + canvas.shape[0] // 2]
        out.append(np.asarray(Image.fromarray(square).resize((side, side), Image.BICUBIC)))
    return np.stack(out)


def _standin_detector(path: Path) -> Path:
    """(B, 3, 320, 320) float -> (B, 100, 8) YOLOv5 rows: one 32x32-patch conv, sigmoid, scale."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.02, (8, 3, 32, 32)).astype(np.float32)
    scale = np.array([320, 320, 160, 160, 1, 1, 1, 1], dtype=np.float32).reshape(1, 1, 8)
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["f"], strides=[32, 32]),
        helper.make_node("Sigmoid", ["f"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Mul", ["t", "scale"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array([0, 8, 100], dtype=np.int64), "shape"),
        numpy_helper.from_array(scale, "scale"),
    ]
    _save(path, nodes, inits, "images", [3, 320, 320], "output", [100, 8])
    sidecar = {"name": "standin-detector", "version": "0", "input_size": 320, "layout": "yolov5",
               "classes": ["animal", "person", "vehicle"], "stride": 32}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def _standin_classifier(path: Path) -> Path:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["f"], strides=[14, 14]),
        helper.make_node("Relu", ["f"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["h"]),
        helper.make_node("Gemm", ["h", "fc"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (16, 3, 14, 14)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 1.0, (16, 38)).astype(np.float32), "fc"),
    ]
    _save(path, nodes, inits, "input", [3, 182, 182], "logits", [38])
    path.with_suffix(".json").write_text(
        json.dumps({"name": "standin-classifier", "version": "0", "input_size": 182})
    )
    return path


def _save(path, nodes, inits, input_name, input_dims, output_name, output_dims) -> None:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", *input_dims])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", *output_dims])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime 1.20 (the Triton venv's) reads
    onnx.save(model, str(path))


def _same_detections(expected: np.ndarray, got: np.ndarray, layout: str = "yolov5") -> None:
    """After the pipeline's own post-processing, at its floor and its usual threshold."""
    for threshold in (0.005, 0.2):
        for want, have in zip(
            postprocess(expected, layout, threshold, 0.45),
            postprocess(got, layout, threshold, 0.45),
        ):
            assert len(want.scores) == len(have.scores)
            np.testing.assert_allclose(have.xyxy, want.xyxy, atol=1e-3)
            np.testing.assert_allclose(have.scores, want.scores, atol=1e-5)
            np.testing.assert_array_equal(have.classes, want.classes)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# The repository builder (no server needed)


@pytest.fixture(scope="session")
def ort_repository(model_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ort-repo")
    return build_repository(*model_files, out, backend="onnxruntime", gpu=True,
                            options=RepositoryOptions(fp16=True))  # fmt: skip


def test_uint8_detector_graph_with_nms_gives_the_float_graphs_detections(
    model_files, ort_repository, canvases
):
    float_graph = _session(model_files[0])
    manual = np.ascontiguousarray(canvases.transpose(0, 3, 1, 2)).astype(np.float32) / 255
    expected = float_graph.run(None, {float_graph.get_inputs()[0].name: manual})[0]
    wrapped = _session(ort_repository / "trapline_detector" / "1" / "model.onnx")
    assert wrapped.get_inputs()[0].type == "tensor(uint8)"
    got = wrapped.run(None, {"images": canvases})[0]
    assert got.shape == (len(canvases), min(100, expected.shape[1]), expected.shape[2])
    _same_detections(expected, got)


def test_uint8_detector_graph_without_nms_gives_the_raw_rows(model_files, canvases):
    spec = load_detector_spec(model_files[0])
    plain = wrap_detector(onnx.load(str(model_files[0])), spec, RepositoryOptions(nms=False))
    got = ort.InferenceSession(plain.SerializeToString()).run(None, {"images": canvases[:2]})[0]
    np.testing.assert_allclose(got, OnnxDetector(model_files[0]).detect(canvases[:2]), atol=1e-4)


def test_nms_in_graph_handles_the_ultralytics_layout(model_files, canvases, tmp_path):
    """MDv1000/MDv6 answer (B, 4 + nc, N) with no objectness; the wrapped graph keeps it."""
    model = onnx.load(str(model_files[0]))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_rows" if o == old else o for o in node.output]
    model.graph.node.append(helper.make_node("Transpose", [f"{old}_rows"], [old], perm=[0, 2, 1]))
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info(old, TensorProto.FLOAT, ["batch", 8, "n"])
    )
    path = tmp_path / "ultra.onnx"
    onnx.save(model, str(path))
    sidecar = {"name": "ultra", "version": "1", "input_size": canvases.shape[1],
               "layout": "ultralytics", "classes": ["animal", "person", "vehicle", "other"]}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    spec = load_detector_spec(path)
    wrapped = wrap_detector(onnx.load(str(path)), spec, RepositoryOptions())
    got = ort.InferenceSession(wrapped.SerializeToString()).run(None, {"images": canvases})[0]
    expected = OnnxDetector(path).detect(canvases)
    assert got.shape[:2] == expected.shape[:2]
    _same_detections(expected, got, "ultralytics")


def test_uint8_classifier_graph_normalises_like_imagenet(model_files, ort_repository, crops):
    spec = load_classifier_spec(model_files[1])
    float_graph = _session(model_files[1])
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    manual = (crops.transpose(0, 3, 1, 2).astype(np.float32) / 255 - mean) / std
    expected = float_graph.run(None, {float_graph.get_inputs()[0].name: manual})[0]
    wrapped = _session(ort_repository / "trapline_classifier" / "1" / "model.onnx")
    np.testing.assert_allclose(wrapped.run(None, {"images": crops})[0], expected, atol=1e-4)


def test_onnxruntime_repository_configs_parse_and_say_gpu_uint8_batching(
    model_files, ort_repository
):
    for name, source in (
        ("trapline_detector", model_files[0]),
        ("trapline_classifier", model_files[1]),
    ):
        text = (ort_repository / name / "config.pbtxt").read_text()
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.name == name and config.backend == "onnxruntime"
        assert config.max_batch_size == 32
        assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
        assert list(config.input[0].dims)[2] == 3
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerators[0].name == "tensorrt"
        assert accelerators[0].parameters["precision_mode"] == "FP16"
        spec = json.loads(config.parameters["trapline_spec"].string_value)
        assert spec == json.loads(source.with_suffix(".json").read_text())
        assert (ort_repository / name / "1" / "model.json").exists()
        assert not (ort_repository / name / "1" / "model.py").exists()


def test_fixed_batch_graph_is_refused_with_the_fix(model_files, tmp_path):
    model = onnx.load(str(model_files[0]))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(ModelContractError, match="fixed batch of 1.*dynamic batch"):
        wrap_detector(model, load_detector_spec(model_files[0]), RepositoryOptions())


def test_triton_urls_pick_the_protocol():
    assert parse_url("grpc://triton:8001") == ("grpc", "triton:8001", False)
    assert parse_url("triton:8001") == ("grpc", "triton:8001", False)
    assert parse_url("https://triton.example:443/") == ("http", "triton.example:443", True)
    with pytest.raises(ValueError, match="not grpc://"):
        parse_url("ftp://triton:21")


def test_triton_venv_problems_are_named_with_the_fix(tmp_path):
    with pytest.raises(TritonSetupError, match="setup_triton.sh"):
        triton_install(tmp_path / "missing")
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(  # a venv whose Python is 3.12: the 3.11 stub cannot run its models
        '#!/bin/sh\necho \'{"version": "3.12", "purelib": "/x", "libdir": "/y", "shared": true}\'\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(TritonSetupError, match=r"Python 3\.12.*built for 3\.11"):
        triton_install(tmp_path / "venv")


# --------------------------------------------------------------------------------------------
# A real tritonserver


@pytest.fixture(scope="session")
def triton_venv() -> Path:
    """Skips (only) when the Triton venv was never created; a broken one fails the tests."""
    if not (default_venv() / "bin" / "python").exists():
        pytest.skip(f"no Triton venv at {default_venv()}: run scripts/setup_triton.sh")
    return default_venv()


@pytest.fixture(scope="session")
def triton(triton_venv, model_files, tmp_path_factory):
    install = triton_install(triton_venv)
    repo = tmp_path_factory.mktemp("triton-repo")
    build_repository(*model_files, repo, backend="python", options=SMALL_BATCHES,
                     python_site_packages=install.site_packages)  # fmt: skip
    # A detector whose config promises 640 x 640 inputs: a contract the client must refuse.
    # (No warmup: its warmup request would fail, and with it the server's start.)
    shutil.copytree(repo / "trapline_detector", repo / "wrong_shape_detector")
    config = repo / "wrong_shape_detector" / "config.pbtxt"
    side = load_detector_spec(model_files[0]).input_size
    text = config.read_text()
    text = text[: text.index("model_warmup")] + text[text.index("# The model's sidecar") :]
    config.write_text(
        text.replace('name: "trapline_detector"', 'name: "wrong_shape_detector"').replace(
            f"dims: [ {side}, {side}, 3 ]", "dims: [ 640, 640, 3 ]"
        )
    )
    with start_triton(repo) as server:
        yield server


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_backends_match_onnx_runtime_on_the_same_uint8_batches(
    triton, model_files, canvases, crops, protocol
):
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    detector, classifier = TritonDetector(url), TritonClassifier(url)
    try:
        assert detector.spec == load_detector_spec(model_files[0])  # read from the server
        assert classifier.spec == load_classifier_spec(model_files[1])
        _same_detections(OnnxDetector(model_files[0]).detect(canvases), detector.detect(canvases))
        np.testing.assert_allclose(
            classifier.classify(crops), OnnxClassifier(model_files[1]).classify(crops), atol=1e-4
        )
    finally:
        detector.close()
        classifier.close()


def test_many_batches_in_flight_come_back_in_order_and_big_batches_are_split(
    triton, model_files, canvases
):
    detector = TritonDetector(triton.grpc_url, options=TritonOptions(max_in_flight=3))
    batches = [canvases[i : i + 3] for i in range(0, len(canvases), 3)]
    one_by_one = [detector.detect(b) for b in batches]
    for many, single in zip(detector.detect_many(batches), one_by_one):
        np.testing.assert_array_equal(many, single)
    repeats = SMALL_BATCHES.max_batch_size // len(canvases) + 1
    big = np.concatenate([canvases] * repeats)  # more than max_batch_size: split, in flight
    assert len(big) > SMALL_BATCHES.max_batch_size
    np.testing.assert_allclose(
        detector.detect(big), np.concatenate(one_by_one * repeats), atol=1e-5
    )
    detector.close()


def test_missing_model_error_names_the_model_the_url_and_what_is_there(triton):
    with pytest.raises(ModelContractError) as caught:
        TritonDetector(triton.grpc_url, "md_v5a")
    message = str(caught.value)
    assert "'md_v5a'" in message and triton.grpc_url in message
    assert "trapline_detector (READY)" in message and "build-repo" in message


def test_wrong_input_shape_in_the_model_config_is_refused(triton):
    with pytest.raises(ModelContractError, match=r"wrong_shape_detector.*\[640, 640, 3\].*needs"):
        TritonDetector(triton.grpc_url, "wrong_shape_detector")


def test_a_model_that_is_not_the_local_sidecars_is_refused(triton, model_files):
    detector_spec = load_detector_spec(model_files[0])
    with pytest.raises(ModelContractError, match="serves name="):
        TritonDetector(triton.http_url, "trapline_classifier", spec=detector_spec)


def test_make_backends_picks_onnx_or_triton(triton, model_files):
    detector, classifier = make_backends("onnx", detector_model=model_files[0],
                                         classifier_model=model_files[1])  # fmt: skip
    assert isinstance(detector, OnnxDetector) and isinstance(classifier, OnnxClassifier)
    detector, classifier = make_backends("triton", triton_url=triton.grpc_url, triton_timeout_s=5)
    assert isinstance(detector, TritonDetector) and isinstance(classifier, TritonClassifier)
    assert classifier.spec == load_classifier_spec(model_files[1])  # told by the server
    detector.close()
    classifier.close()
    with pytest.raises(ValueError, match="'onnx' or 'triton'"):
        make_backends("torch")  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_unreachable_server_fails_clearly_after_bounded_retries(scheme):
    url = f"{scheme}://127.0.0.1:{free_port()}"  # nothing listens there
    options = TritonOptions(timeout_s=1.0, retries=2, backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(TritonUnavailableError, match="after 3 attempts") as caught:
        TritonDetector(url, options=options)
    assert time.monotonic() - started < 5
    assert url in str(caught.value) and "trapline_detector" in str(caught.value)


def test_retries_reach_a_server_that_was_briefly_unavailable(triton, canvases):
    """The port refuses connections for 0.5 s, then forwards to Triton: backoff gets through."""
    port = free_port()
    proxy = threading.Thread(target=_forward, args=(port, triton.grpc_port, 0.5), daemon=True)
    proxy.start()
    started = time.monotonic()
    detector = TritonDetector(
        f"grpc://127.0.0.1:{port}", options=TritonOptions(retries=8, backoff_s=0.1)
    )
    assert time.monotonic() - started >= 0.4  # it did have to wait
    assert detector.detect(canvases[:2]).shape[0] == 2
    detector.close()


def test_a_model_that_fails_to_load_stops_start_with_the_log_tail(triton_venv, tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 4\n'
    )
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('boom: bad weights')\n")
    with pytest.raises(ServerStartError, match="(?s)exited with status.*boom: bad weights"):
        start_triton(repo, venv=triton_venv, timeout_s=60)


def _forward(listen_port: int, target_port: int, delay_s: float) -> None:
    """A TCP forwarder that starts listening only after `delay_s` (test helper, loopback only)."""
    time.sleep(delay_s)
    with socket.create_server(("127.0.0.1", listen_port)) as server:
        server.settimeout(10)
        try:
            while True:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", target_port))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()
        except TimeoutError:  # no new connection for 10 s: the test is over
            return


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------------------------
# The streaming end-to-end test with the Triton backend selected


def test_streaming_end_to_end_with_triton_gives_the_onnx_runtime_rows(
    triton, model_files, tansu, kafka_topic, tmp_path
):
    """Events -> Triton-served models -> tables exactly once, bad events in the DLQ, and the same
    media and observations as the in-process ONNX Runtime run of the same events."""
    from test_stream import run_worker, send_raw, settings_for

    from trapline.pipelines.readers import read_table
    from trapline.services.adapters import kafka_io
    from trapline.services.tools.submit import submit_folder

    if model_files[0].parent != DEMO:
        pytest.skip("the demo models are not built")
    card = tmp_path / "card" / "cam-b"
    shutil.copytree(
        Path(__file__).resolve().parents[2] / "examples" / "photos" / "deployment-b", card
    )
    topic = kafka_topic("uploads", partitions=2)
    photos = submit_folder(str(card.parent), tansu.bootstrap, topic, "cam-b").submitted
    send_raw(tansu, topic, b"{not json")

    outs = {}
    for backend in ("triton", "onnx"):
        settings = settings_for(
            tansu, topic, f"g-e2e-{backend}", model_backend=backend, triton_url=triton.grpc_url
        )
        outs[backend] = tmp_path / backend
        run_worker(settings, outs[backend])

    def rows(backend: str, table: str, columns: list[str]) -> list[dict]:
        data = read_table(str(outs[backend]), table, columns=columns).to_pylist()
        return sorted(data, key=lambda r: r[columns[0]])

    media_columns = ["media_id", "observation_type", "animal_count", "event_label"]
    assert rows("triton", "media", media_columns) == rows("onnx", "media", media_columns)
    keys, numbers = ["observation_id", "category", "label"], ["bbox_x", "bbox_y", "detection_conf"]
    served, local = (rows(b, "observations", keys + numbers) for b in ("triton", "onnx"))
    assert [[r[k] for k in keys] for r in served] == [[r[k] for k in keys] for r in local]
    np.testing.assert_allclose(
        [[r[k] for k in numbers] for r in served],
        [[r[k] for k in numbers] for r in local],
        atol=2e-3,
    )
    media = read_table(str(outs["triton"]), "media").to_pylist()
    failures = read_table(str(outs["triton"]), "failures").to_pylist()
    assert (
        len(media) == len({m["media_id"] for m in media})
        and len(media) + len(failures) == photos + 1
    )
    assert {m["detector"] for m in media} == {load_detector_spec(model_files[0]).name}
    dlq = kafka_io.read_topic(tansu.bootstrap, f"{topic}.dlq", 2 * len(failures), timeout_s=10)
    assert len(dlq) == 2 * len(failures)  # each run dead-letters its failures once
