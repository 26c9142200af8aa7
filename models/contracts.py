"""What a detector or classifier file promises: its input size, output layout and labels.

A model is an ONNX file plus a JSON sidecar of the same stem (`detector.onnx` +
`detector.json`). The sidecar holds what the ONNX graph cannot say: the name and version that
go into every result row, the output layout, and the labels in logit order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trapline.models.labels import DEEPFAUNE_LABELS, DETECTOR_CLASSES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelContractError(ValueError):
    """A model file or its sidecar does not match what the pipeline expects."""


@dataclass(frozen=True)
class DetectorSpec:
    """MegaDetector-style detector: square letterboxed RGB in, YOLO rows out."""

    name: str
    version: str
    input_size: int  # side of the square letterbox, pixels (1280 for MegaDetector v5)
    layout: Literal["yolov5", "ultralytics"] = "yolov5"  # objectness x class, or class only
    classes: tuple[str, ...] = DETECTOR_CLASSES  # category of each class column
    stride: int = 32  # letterbox sizes are multiples of it


@dataclass(frozen=True)
class ClassifierSpec:
    """DeepFaune-style classifier: square crop, ImageNet-normalised, logits out."""

    name: str
    version: str
    input_size: int = 182  # DeepFaune's crop side
    labels: tuple[str, ...] = DEEPFAUNE_LABELS  # label of each logit
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    trained_labels: tuple[str, ...] = field(default=())  # demo models: the labels they learned


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def load_detector_spec(model_path: Path) -> DetectorSpec:
    raw = _read_sidecar(model_path)
    try:
        spec = DetectorSpec(
            name=raw["name"],
            version=str(raw["version"]),
            input_size=int(raw["input_size"]),
            layout=raw.get("layout", "yolov5"),
            classes=tuple(raw.get("classes", DETECTOR_CLASSES)),
            stride=int(raw.get("stride", 32)),
        )
    except KeyError as missing:
        raise ModelContractError(f"{sidecar_path(model_path)}: missing key {missing}") from None
    if spec.layout not in ("yolov5", "ultralytics"):
        raise ModelContractError(f"{model_path}: unknown layout {spec.layout!r}")
    return spec


def load_classifier_spec(model_path: Path) -> ClassifierSpec:
    raw = _read_sidecar(model_path)
    try:
        return ClassifierSpec(
            name=raw["name"],
            version=str(raw["version"]),
            input_size=int(raw.get("input_size", 182)),
            labels=tuple(raw.get("labels", DEEPFAUNE_LABELS)),
            mean=tuple(raw.get("mean", IMAGENET_MEAN)),
            std=tuple(raw.get("std", IMAGENET_STD)),
            trained_labels=tuple(raw.get("trained_labels", ())),
        )
    except KeyError as missing:
        raise ModelContractError(f"{sidecar_path(model_path)}: missing key {missing}") from None


def _read_sidecar(model_path: Path) -> dict:
    path = sidecar_path(model_path)
    if not model_path.exists():
        raise ModelContractError(f"model file not found: {model_path}")
    if not path.exists():
        raise ModelContractError(
            f"{model_path}: no sidecar {path.name}; write one with name, version, input_size"
        )
    return json.loads(path.read_text())
