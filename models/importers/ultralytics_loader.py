"""Loading ultralytics checkpoints (MDv1000, MDv6) without the ultralytics package.

The pickle goes through the same allow-list as YOLOv5's (`checkpoint_loader.load_trusted`),
whose `ultralytics.*` names resolve to the plain-torch classes of `ultralytics_arch.py`
(YOLOv8 / YOLO11 detection: Conv, C2f, C3k2, SPPF, C2PSA, Detect with DFL). A block outside
that set (YOLOv9's RepNCSPELAN4, YOLOv10's v10Detect, RT-DETR...) is refused with its name.
The exported graph answers (B, 4 + nc, N): box centre and size in input pixels, then class
scores, no objectness (the `ultralytics` layout of `models/yolo.py`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from trapline.models.importers.checkpoint_loader import load_trusted
from trapline.models.importers.identify import CheckpointError
from trapline.models.importers.ultralytics_arch import Detect, DetectionModel
from trapline.models.importers.yolov5_arch import patch_loaded


def load_ultralytics(path: Path) -> nn.Module:
    """The float32 eval model of a trusted ultralytics checkpoint (what attempt_load_one_weight
    picks: 'ema' if present, else 'model')."""
    ckpt = load_trusted(path)
    model = ckpt
    if isinstance(ckpt, dict):
        model = ckpt["ema"] if ckpt.get("ema") is not None else ckpt.get("model")
    layers = getattr(model, "model", None) if isinstance(model, DetectionModel) else None
    if not isinstance(layers, nn.Sequential) or not isinstance(layers[-1], Detect):
        raise CheckpointError(
            f"{path}: expected an ultralytics DetectionModel with a Detect head under 'model' or "
            f"'ema', found {type(model).__name__}"
        )
    head = model.model[-1]
    end2end = bool(head.__dict__.get("end2end", False)) or (
        "one2one_cv2" in head._modules and head.__dict__.get("_end2end", True)
    )
    if end2end:
        raise CheckpointError(
            f"{path}: the Detect head is end-to-end (YOLOv10/YOLO26 one-to-one top-k rows), not "
            "the (B, 4 + nc, N) layout the pipeline decodes, so it cannot be served as it is; use "
            "MDv5a or an MDv1000 / MDv6 YOLOv9-c or YOLO11 model"
        )
    if not hasattr(model, "stride"):  # as attempt_load_one_weight does
        model.stride = head.stride
    return patch_loaded(model.float().eval())
