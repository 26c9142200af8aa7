"""Detect stage: letterbox a batch of frames, run the detector, keep boxes after NMS.

Boxes leave this stage in the MegaDetector convention: relative x_min, y_min, width, height in
the upright photo, so they are independent of the decode scale and of the letterbox.
"""

from __future__ import annotations

import numpy as np

from trapline.models.backend import DetectorBackend
from trapline.models.yolo import postprocess
from trapline.pipelines.letterbox import Letterbox
from trapline.pipelines.types import Detection, Frame


def detect_frames(
    frames: list[Frame], detector: DetectorBackend, conf_threshold: float, iou_threshold: float
) -> list[list[Detection]]:
    """One list of detections per frame, best first."""
    if not frames:
        return []
    spec = detector.spec
    side = spec.input_size
    batch = np.empty((len(frames), side, side, 3), dtype=np.uint8)
    boxes = []
    for i, frame in enumerate(frames):
        box = Letterbox.fit(frame.image.width, frame.image.height, side)
        box.draw(frame.image, batch[i])
        boxes.append(box)
    raw = detector.detect(batch)
    if raw.shape[0] != len(frames):
        raise ValueError(f"detector returned {raw.shape[0]} results for {len(frames)} images")
    kept = postprocess(raw, spec.layout, conf_threshold, iou_threshold)
    results = []
    for box, found in zip(boxes, kept):
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
