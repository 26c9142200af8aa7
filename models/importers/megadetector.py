"""MegaDetector (YOLOv5 / ultralytics checkpoints) -> ONNX + sidecar for the pipeline.

The exported graph takes `images` (B, 3, S, S) float32 RGB /255 and answers `output` in the
checkpoint's own layout: YOLOv5 rows (B, N, 5 + nc) for MegaDetector v5, (B, 4 + nc, N) for
ultralytics models. S is the checkpoint's native size (from `megadetector_info.json` when the
file has one, else `NATIVE_SIZES` for a known MDv1000 file, else 1280 for stride-64 models such
as MegaDetector v5 and 640 for the rest) unless `img_size` says otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from trapline.models.contracts import load_detector_spec
from trapline.models.importers.checkpoint_loader import load_trusted
from trapline.models.importers.identify import CheckpointError, CheckpointInfo, identify
from trapline.models.importers.onnx_export import Parity, check_parity, export_onnx
from trapline.models.importers.yolov5_arch import Detect, Model, patch_loaded
from trapline.models.labels import DETECTOR_CLASSES

# Trained input sizes of the public MDv1000 files (the "input size" column of the MegaDetector
# v1000 release notes), used when the file is recognised by md5 and carries no
# megadetector_info.json. Sorrel is the one that differs from its architecture's default.
NATIVE_SIZES = {
    "megadetector-v1000-redwood": 1280,  # YOLOv5x6
    "megadetector-v1000-cedar": 640,  # YOLOv9c
    "megadetector-v1000-larch": 640,  # YOLO11L
    "megadetector-v1000-sorrel": 960,  # YOLO11s
    "megadetector-v1000-spruce": 640,  # YOLOv5s
}


class TrustRequired(CheckpointError):
    """The checkpoint is a pickle and the user has not said it is trusted."""


@dataclass
class ImportResult:
    onnx_path: Path
    sidecar: dict
    parity: Parity
    info: CheckpointInfo


@dataclass(frozen=True)
class ImportOptions:
    trust: bool = False  # the user vouches for the file (it is unpickled)
    img_size: int | None = None  # input side; default: the checkpoint's native size
    name: str | None = None  # sidecar name; default: known release name, else the file stem
    version: str | None = None  # sidecar version; default: known release version, else "0"
    classes: tuple[str, ...] | None = (
        None  # category of each class column, if not the model's names
    )
    samples: int = 2  # random batches compared in the parity check
    batch: int = 1  # images per parity batch
    tolerance: float = 1e-3  # largest score (or logit) difference accepted, ONNX vs torch
    dynamic: bool = False  # detectors: dynamic H and W axes (needed by `letterbox: rectangle`)


def require_trust(info: CheckpointInfo, trust: bool, command: str) -> None:
    if not trust:
        raise TrustRequired(
            f"{info.path} is a pickled checkpoint ({info.reason}; md5 {info.md5}). Loading a "
            "pickle runs code it names; if you trust where this file came from, rerun: "
            f"trapline models import {command} {info.path} --trust"
        )


def import_megadetector(path: Path, out: Path, options: ImportOptions) -> ImportResult:
    info = identify(path)
    if info.kind == "deepfaune":
        raise CheckpointError(
            f"{path} is a DeepFaune classifier checkpoint, not a detector: "
            f"trapline models import deepfaune {path}"
        )
    if info.kind == "unknown":
        raise CheckpointError(
            f"{path}: not a MegaDetector checkpoint ({info.reason}); expected a YOLOv5 pickle "
            "(imports models.yolo) or an ultralytics one (imports ultralytics.*)"
        )
    require_trust(info, options.trust, "megadetector")
    if info.kind == "megadetector-ultralytics":
        from trapline.models.importers.ultralytics_loader import load_ultralytics

        model, layout = load_ultralytics(path), "ultralytics"
    else:
        model, layout = _load_yolov5(path), "yolov5"
    stride = int(max(float(s) for s in model.stride))
    names = _class_names(model, path, options.classes)
    side = options.img_size or int(
        info.metadata.get("image_size")
        or NATIVE_SIZES.get(info.known_name or "")
        or (1280 if stride == 64 else 640)
    )
    if side % stride:
        raise CheckpointError(f"{path}: input size {side} is not a multiple of the stride {stride}")
    wrapped = _FirstOutput(model).eval()
    export_onnx(wrapped, out, "images", "output", side, dynamic_hw=options.dynamic)
    parity = check_parity(
        wrapped, out, side, samples=options.samples, batch=options.batch,
        tolerance=options.tolerance, layout=layout,
    )  # fmt: skip
    if parity.max_abs_diff_scores is not None and parity.max_abs_diff_scores > options.tolerance:
        raise CheckpointError(
            f"{out}: ONNX scores differ from torch by {parity.max_abs_diff_scores:.3g} "
            f"(> {options.tolerance}); the export is not trustworthy"
        )
    sidecar = {
        "name": options.name or info.metadata.get("model_name") or info.known_name or path.stem,
        "version": options.version or info.known_version
        or str(info.metadata.get("model_version_string", "0")),
        "input_size": side,
        "layout": layout,
        "classes": list(names),
        "stride": stride,
        "dynamic_hw": options.dynamic,
        "source": {"file": path.name, "md5": info.md5, "identified_as": info.kind,
                   "why": info.reason},
        "parity": parity.as_dict(),
        "imported_by": "trapline models import megadetector",
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    load_detector_spec(out)  # the sidecar must satisfy the pipeline's contract loader
    return ImportResult(out, sidecar, parity, info)


class _FirstOutput(nn.Module):
    """YOLOv5 / ultralytics eval forward returns (decoded, raw feature maps): keep the first."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _load_yolov5(path: Path) -> Model:
    ckpt = load_trusted(path)
    model = ckpt
    if isinstance(ckpt, dict):  # YOLOv5's train.py saves both; 'ema' is what it evaluates
        model = ckpt["ema"] if ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(model, Model) or not isinstance(model.model[-1], Detect):
        raise CheckpointError(
            f"{path}: expected a YOLOv5 detection model under 'model' or 'ema', found "
            f"{type(model).__name__}"
        )
    return patch_loaded(model.float().eval())


def _class_names(model: nn.Module, path: Path, override: tuple[str, ...] | None) -> tuple[str, ...]:
    raw = getattr(model, "names", None)
    names = tuple(raw[k] for k in sorted(raw)) if isinstance(raw, dict) else tuple(raw or ())
    nc = int(model.model[-1].nc)
    chosen = override or names
    if len(chosen) != nc:
        raise CheckpointError(
            f"{path}: the model has {nc} classes but {len(chosen)} names {list(chosen)}; "
            "pass --classes with one category per class column"
        )
    unknown = [c for c in chosen if c not in DETECTOR_CLASSES]
    if unknown:
        raise CheckpointError(
            f"{path}: class names {unknown} are not pipeline categories {list(DETECTOR_CLASSES)}; "
            "pass --classes mapping each class column to one of them"
        )
    return tuple(chosen)
