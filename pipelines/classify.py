"""Crop and classify stage: animal boxes -> DeepFaune-style square crops -> labels.

The crop rule is DeepFaune's: extend the box's short side to make it square (centred), clip at
the photo border, resize to the classifier's side with bicubic (DeepFaune's classifTools.py
`Classifier`: torchvision `Resize((S, S), BICUBIC)` on the PIL crop, i.e. PIL's bicubic). Crops
come from the frame's image: the reduced-scale decode, or every pixel with `full_resolution`.
A prediction whose top probability is below the threshold is reported as `undefined`, with its
top-k kept.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from trapline.models.backend import ClassifierBackend
from trapline.pipelines.fidelity import CropRounding
from trapline.pipelines.types import Detection, Frame

UNDEFINED = "undefined"


def square_crop_box(
    bbox: tuple[float, float, float, float],
    width: int,
    height: int,
    rounding: CropRounding = "round",
) -> tuple[int, int, int, int]:
    """Relative box -> pixel (left, top, right, bottom) made square, clipped to the image.

    `round`: edges to the nearest pixel. `truncate`: DeepFaune's arithmetic for MegaDetector
    boxes (detectTools.py `DetectorJSON.convertJSONboxToBox`: x_min = int(x * W),
    x_max = x_min + int(w * W); then `cropSquareCVtoPIL`: the short side grows by
    int((long - short) / 2) at each end, edges int() and clipped), so the crop holds the same
    pixels DeepFaune classifies.
    """
    if rounding == "truncate":
        left, top = int(bbox[0] * width), int(bbox[1] * height)
        right, bottom = left + int(bbox[2] * width), top + int(bbox[3] * height)
        box_w, box_h = right - left, bottom - top
        if box_w > box_h:
            top, bottom = top - int((box_w - box_h) / 2), bottom + int((box_w - box_h) / 2)
        if box_h > box_w:
            left, right = left - int((box_h - box_w) / 2), right + int((box_h - box_w) / 2)
        left, top, right, bottom = max(0, left), max(0, top), min(right, width), min(bottom, height)
        return left, top, max(right, left + 1), max(bottom, top + 1)
    x1, y1 = bbox[0] * width, bbox[1] * height
    x2, y2 = x1 + bbox[2] * width, y1 + bbox[3] * height
    box_w, box_h = x2 - x1, y2 - y1
    if box_w > box_h:
        grow = (box_w - box_h) / 2
        y1, y2 = y1 - grow, y2 + grow
    else:
        grow = (box_h - box_w) / 2
        x1, x2 = x1 - grow, x2 + grow
    left, top = max(0, int(round(x1))), max(0, int(round(y1)))
    right, bottom = min(width, int(round(x2))), min(height, int(round(y2)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def classify_frames(
    frames: list[Frame],
    detections: list[list[Detection]],
    classifier: ClassifierBackend,
    threshold: float,
    max_crops_per_photo: int,
    top_k: int = 3,
    crop_rounding: CropRounding = "round",
) -> None:
    """Label every animal detection in place (at most `max_crops_per_photo` per photo)."""
    spec = classifier.spec
    side = spec.input_size
    targets: list[Detection] = []
    crops: list[np.ndarray] = []
    for frame, found in zip(frames, detections):
        animals = [d for d in found if d.category == "animal"][:max_crops_per_photo]
        for detection in animals:
            box = square_crop_box(
                detection.bbox, frame.image.width, frame.image.height, crop_rounding
            )
            crop = frame.image.crop(box).resize((side, side), Image.Resampling.BICUBIC)
            crops.append(np.asarray(crop))
            targets.append(detection)
    if not crops:
        return
    logits = np.asarray(classifier.classify(np.stack(crops)), dtype=np.float32)
    if logits.shape != (len(crops), len(spec.labels)):
        raise ValueError(
            f"classifier returned {logits.shape}, expected ({len(crops)}, {len(spec.labels)})"
        )
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, axis=1)[:, :top_k]
    for detection, row_logits, row_probs, row_order in zip(targets, logits, probabilities, order):
        best = float(row_probs[row_order[0]])
        detection.logits = row_logits
        detection.probability = round(best, 4)
        detection.label = spec.labels[row_order[0]] if best >= threshold else UNDEFINED
        detection.top_labels = [spec.labels[i] for i in row_order]
        detection.top_probabilities = [round(float(row_probs[i]), 4) for i in row_order]
