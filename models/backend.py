"""What the pipeline needs from a model server, whatever runs the model.

Backends receive uint8 NHWC batches (bytes, not float32 tensors: 4x less to move, and the
server's GPU does the cheap conversion) and return the model's raw output. The embedded mode
uses ONNX Runtime in-process; the service mode sends the same batches to Triton.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from trapline.models.contracts import ClassifierSpec, DetectorSpec


class DetectorBackend(Protocol):
    spec: DetectorSpec

    def detect(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 letterboxed RGB -> raw YOLO output in `spec.layout`.

        A backend with a true `dynamic_input` attribute also takes (B, H, W, 3) stride-multiple
        rectangles (the `rectangle` letterbox, pipelines/fidelity.py); one without is fed S x S.
        """
        ...


class ClassifierBackend(Protocol):
    spec: ClassifierSpec

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, C, 3) uint8 RGB crops -> (B, len(spec.labels)) float32 logits."""
        ...
