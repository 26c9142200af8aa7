"""Detect stage: letterbox a batch of frames, run the detector, keep boxes after NMS.

Boxes leave this stage in the MegaDetector convention: relative x_min, y_min, width, height in
the upright photo, so they are independent of the decode scale and of the letterbox.

With the `rectangle` letterbox (pipelines/fidelity.py) frames of different aspect ratios get
different canvases; each canvas shape is one detector call, as upstream runs each photo alone.
"""

from __future__ import annotations

import numpy as np

from trapline.models.backend import DetectorBackend
from trapline.models.contracts import ModelContractError
from trapline.models.yolo import Boxes, postprocess
from trapline.pipelines.fidelity import LetterboxMode, ResizeFilter
from trapline.pipelines.letterbox import Letterbox
from trapline.pipelines.types import Detection, Frame


def check_letterbox(detector: DetectorBackend, letterbox: LetterboxMode) -> None:
    """Refuse the rectangle on a detector whose input is fixed at S x S, before any photo."""
    if letterbox == "rectangle" and not getattr(detector, "dynamic_input", False):
        spec = detector.spec
        raise ModelContractError(
            f"detector {spec.name!r} {spec.version} takes a fixed {spec.input_size} x "
            f"{spec.input_size} input, so letterbox: rectangle (profile: reference) cannot feed "
            "it a 4:3 canvas; export the model with dynamic height and width axes (YOLOv5 "
            "`export.py --dynamic`, ultralytics `yolo export ... dynamic=True`), or set "
            "letterbox: square"
        )


def detect_frames(
    frames: list[Frame],
    detector: DetectorBackend,
    conf_threshold: float,
    iou_threshold: float,
    letterbox: LetterboxMode = "square",
    resize: ResizeFilter = "pillow",
) -> list[list[Detection]]:
    """One list of detections per frame, best first."""
    if not frames:
        return []
    check_letterbox(detector, letterbox)
    spec = detector.spec
    side = spec.input_size
    if letterbox == "rectangle":
        boxes = [
            Letterbox.fit_rectangle(f.image.width, f.image.height, side, spec.stride)
            for f in frames
        ]
    else:
        boxes = [Letterbox.fit(f.image.width, f.image.height, side) for f in frames]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, box in enumerate(boxes):
        by_shape.setdefault(box.shape, []).append(i)
    found_of: dict[int, Boxes] = {}
    for (height, width), indices in by_shape.items():
        batch = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        for row, i in enumerate(indices):
            boxes[i].draw(frames[i].image, batch[row], resize)
        raw = detector.detect(batch)
        if raw.shape[0] != len(indices):
            raise ValueError(f"detector returned {raw.shape[0]} results for {len(indices)} images")
        for i, kept in zip(indices, postprocess(raw, spec.layout, conf_threshold, iou_threshold)):
            found_of[i] = kept
    results = []
    for i, box in enumerate(boxes):
        found = found_of[i]
        relative = box.to_relative(found.xyxy)
        results.append(
            [
                Detection(
                    category=spec.classes[int(cls)],
                    confidence=round(float(score), 4),
                    bbox=tuple(round(float(v), 4) for v in rel),  # type: ignore[arg-type]
                )
                for rel, score, cls in zip(relative, found.scores, found.classes)
                if rel[2] > 0 and rel[3] > 0
            ]
        )
    return results
