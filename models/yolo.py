"""Post-processing for YOLO detectors in both output layouts, and NMS.

- `yolov5` (MegaDetector v5a/v5b, our demo detector): rows of cx, cy, w, h, objectness, class
  scores; a row's score per class is objectness x class score.
- `ultralytics` (MDv1000, MDv6): (B, 4 + nc, N) with no objectness; the score is the class score.
Both end as per-image arrays of kept boxes in canvas pixels (x1, y1, x2, y2), score and class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CANDIDATES = 3000  # before NMS, the best-scoring rows only (YOLOv5 uses 30000 on GPU)


@dataclass(slots=True)
class Boxes:
    xyxy: np.ndarray  # (K, 4) float32, canvas pixels
    scores: np.ndarray  # (K,) float32
    classes: np.ndarray  # (K,) int64, index into the detector's class list


def split_scores(raw: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, ...) raw output -> boxes (B, N, 4 cx cy w h) and class scores (B, N, nc)."""
    if layout == "yolov5":
        return raw[..., :4], raw[..., 4:5] * raw[..., 5:]
    if layout == "ultralytics":
        rows = raw.transpose(0, 2, 1)  # (B, 4 + nc, N) -> (B, N, 4 + nc)
        return rows[..., :4], rows[..., 4:]
    raise ValueError(f"unknown YOLO output layout {layout!r} (expected yolov5 or ultralytics)")


def postprocess(
    raw: np.ndarray, layout: str, conf_threshold: float, iou_threshold: float, max_det: int = 300
) -> list[Boxes]:
    """Threshold, class-aware NMS and top `max_det` per image (300, as YOLOv5's and
    ultralytics' NMS and so MegaDetector: a lower cap drops boxes they keep)."""
    centres, class_scores = split_scores(np.asarray(raw, dtype=np.float32), layout)
    best_class = class_scores.argmax(axis=-1)
    best_score = np.take_along_axis(class_scores, best_class[..., None], axis=-1)[..., 0]
    results = []
    for b in range(raw.shape[0]):
        keep = np.flatnonzero(best_score[b] >= conf_threshold)
        if keep.size > MAX_CANDIDATES:
            keep = keep[np.argsort(-best_score[b, keep])[:MAX_CANDIDATES]]
        xyxy = cxcywh_to_xyxy(centres[b, keep])
        scores = best_score[b, keep]
        classes = best_class[b, keep].astype(np.int64)
        kept = nms(xyxy, scores, classes, iou_threshold)[:max_det]
        results.append(Boxes(xyxy[kept], scores[kept], classes[kept]))
    return results


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against (N, 4) xyxy boxes."""
    ix1 = np.maximum(box[0], others[:, 0])
    iy1 = np.maximum(box[1], others[:, 1])
    ix2 = np.minimum(box[2], others[:, 2])
    iy2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Greedy class-aware NMS (boxes of different classes never suppress each other).

    Returns kept indices, best score first. Classes are separated by offsetting boxes, the
    YOLOv5 trick, so one pass handles all classes. The offset is the boxes' full extent
    (max - min + 1, not max + 1), so each class lands in its own interval whatever the
    coordinates: boxes may reach past the canvas origin, where a max-based offset lets one
    class overlap the next. Shifting happens in float64, exact for any realistic extent.
    """
    if scores.size == 0:
        return np.empty(0, dtype=np.int64)
    boxes = np.asarray(xyxy, dtype=np.float64)
    low = float(boxes.min())
    extent = float(boxes.max()) - low + 1.0
    shifted = (boxes - low) + classes[:, None].astype(np.float64) * extent
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        first = order[0]
        kept.append(first)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(shifted[first], shifted[rest]) <= iou]
    return np.asarray(kept, dtype=np.int64)
