"""Repeat-detection elimination: boxes that never move are scenery, not animals.

A branch or a rock that the detector takes for an animal is "seen" in every photo the camera
takes, at the same place, for days. MegaDetector's RDE finds such places per camera: boxes of
one category whose IoU with a place's first box is at least `static_iou`, in at least
`static_min_count` photos. We add a time span (`static_min_span_h`): an animal bedded down for a
burst of photos stays at one place for minutes or hours, a rock for the whole deployment.
Large boxes are never flagged (`static_max_area`): they are usually animals close to the lens.

Flagged boxes stay in `observations` (`is_static`, `static_group`) for review and are left out
of labels, counts and the event vote. A deployment is seen as a whole only in folder runs; the
stream worker sees one segment at a time (see docs/postprocessing.md).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from trapline.pipelines.postprocess.options import PostprocessOptions
from trapline.pipelines.types import Detection

BoxKey = tuple[str, int]  # (media_id, index of the detection in the photo)


@dataclass(slots=True)
class _Place:
    deployment_id: str
    category: str
    bbox: tuple[float, float, float, float]  # the first box seen there (as RDE)
    keys: list[BoxKey] = field(default_factory=list)
    media: set[str] = field(default_factory=set)
    times: list[datetime] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StaticGroup:
    """One place flagged as static: what a reviewer needs to confirm or overrule it."""

    group_id: str
    deployment_id: str
    category: str
    bbox: tuple[float, float, float, float]
    photos: int
    first: datetime | None
    last: datetime | None


@dataclass(slots=True)
class StaticDetections:
    group_of: dict[BoxKey, str]  # flagged box -> its group id
    groups: list[StaticGroup]

    def kept(self, media_id: str, detections: list[Detection]) -> list[Detection]:
        """The photo's detections that are not static."""
        return [d for i, d in enumerate(detections) if (media_id, i) not in self.group_of]


def iou_many(box: tuple[float, ...], boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x, y, w, h) box with each row of `boxes`."""
    x2, y2 = box[0] + box[2], box[1] + box[3]
    w = np.clip(
        np.minimum(x2, boxes[:, 0] + boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None
    )
    h = np.clip(
        np.minimum(y2, boxes[:, 1] + boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None
    )
    inter = w * h
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def find_static(
    photos: list[tuple[str, str, datetime | None, list[Detection]]],
    options: PostprocessOptions,
) -> StaticDetections:
    """Flag repeat detections in (media_id, deployment_id, timestamp, detections) photos."""
    found = StaticDetections({}, [])
    if not (options.enabled and options.static):
        return found
    places: dict[tuple[str, str], list[_Place]] = defaultdict(list)
    refs: dict[tuple[str, str], list[tuple[float, float, float, float]]] = defaultdict(list)
    ordered = sorted(photos, key=lambda p: (p[2] is None, p[2] or datetime.min, p[0]))
    for media_id, deployment_id, when, detections in ordered:
        for index, d in enumerate(detections):
            area = d.bbox[2] * d.bbox[3]
            if area > options.static_max_area or d.confidence < options.static_min_confidence:
                continue
            key = (deployment_id, d.category)
            known = places[key]
            place = None
            if known:
                overlap = iou_many(d.bbox, np.asarray(refs[key], dtype=np.float64))
                best = int(overlap.argmax())
                if overlap[best] >= options.static_iou:
                    place = known[best]
            if place is None:
                place = _Place(deployment_id, d.category, d.bbox)
                known.append(place)
                refs[key].append(d.bbox)
            place.keys.append((media_id, index))
            place.media.add(media_id)
            if when is not None:
                place.times.append(when)
    for (deployment_id, category), known in sorted(places.items()):
        for place in known:
            span_h = (
                (max(place.times) - min(place.times)).total_seconds() / 3600 if place.times else 0.0
            )
            if len(place.media) < options.static_min_count or span_h < options.static_min_span_h:
                continue
            group_id = _group_id(place)
            found.groups.append(
                StaticGroup(
                    group_id, deployment_id, category, place.bbox, len(place.media),
                    min(place.times, default=None), max(place.times, default=None),
                )
            )  # fmt: skip
            for key in place.keys:
                found.group_of[key] = group_id
    return found


def _group_id(place: _Place) -> str:
    """Stable across re-runs of the same photos: deployment, category and the first box."""
    box = ",".join(f"{v:.4f}" for v in place.bbox)
    digest = hashlib.sha256(f"{place.deployment_id}|{place.category}|{box}".encode()).hexdigest()
    return f"{place.deployment_id}-static-{digest[:8]}"
