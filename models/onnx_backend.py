"""ONNX Runtime backends: the embedded mode's in-process model server.

The ONNX graph may take float32 (MegaDetector / DeepFaune exports: RGB /255, NCHW) or uint8
(graphs that normalise inside, as our Triton repository builds them); the session tells us which,
and the conversion happens here, once per batch, vectorised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from trapline.models.contracts import (
    ModelContractError,
    load_classifier_spec,
    load_detector_spec,
)


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelContractError(f"cannot load ONNX model {path}: {error}") from None


class _OnnxModel:
    def __init__(self, path: Path, side: int, threads: int):
        self.session = make_session(path, threads)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.takes_uint8 = model_input.type == "tensor(uint8)"
        shape = model_input.shape
        if len(shape) != 4 or shape[1] != 3:
            raise ModelContractError(f"{path}: input {shape} is not (batch, 3, H, W)")
        # Symbolic H and W (an export with dynamic axes) take any canvas: the rectangle letterbox.
        self.dynamic_hw = not any(isinstance(dim, int) for dim in shape[2:])
        for dim in shape[2:]:
            if isinstance(dim, int) and dim != side:
                raise ModelContractError(
                    f"{path}: input side {dim} differs from the sidecar's input_size {side}"
                )

    def run(self, nchw_float: np.ndarray | None, nchw_uint8: np.ndarray) -> np.ndarray:
        feed = nchw_uint8 if self.takes_uint8 else nchw_float
        return self.session.run(None, {self.input_name: feed})[0]


class OnnxDetector:
    def __init__(self, path: Path, threads: int = 1):
        self.spec = load_detector_spec(path)
        self._model = _OnnxModel(path, self.spec.input_size, threads)
        self.dynamic_input = self._model.dynamic_hw  # accepts any H x W (pipelines/detect.py)

    def detect(self, batch: np.ndarray) -> np.ndarray:
        nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        scaled = None if self._model.takes_uint8 else nchw.astype(np.float32) * (1 / 255)
        return self._model.run(scaled, nchw)


class OnnxClassifier:
    def __init__(self, path: Path, threads: int = 1):
        self.spec = load_classifier_spec(path)
        self._model = _OnnxModel(path, self.spec.input_size, threads)
        std = np.asarray(self.spec.std, dtype=np.float32)
        self._scale = (1 / (255 * std)).reshape(1, 3, 1, 1)
        self._shift = (np.asarray(self.spec.mean, dtype=np.float32) / std).reshape(1, 3, 1, 1)

    def classify(self, batch: np.ndarray) -> np.ndarray:
        nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        normalised = None
        if not self._model.takes_uint8:
            normalised = nchw.astype(np.float32) * self._scale - self._shift
        return self._model.run(normalised, nchw)
