"""The typed values that flow between stages, from a media reference to result rows.

Each stage takes one of these and returns the next; errors are values too (`Failure`), so a bad
photo becomes a row in the `failures` table instead of an exception that stops the flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from PIL import Image


@dataclass(slots=True)
class MediaRef:
    """Where a photo lives and what the producer told us about it."""

    uri: str  # fsspec URL or local path
    deployment_id: str
    media_id: str | None = None  # the producer's id; else the sha256 of the bytes
    timestamp: datetime | None = None  # from the upload message; beats EXIF when given
    source: str | None = None  # "topic/partition/offset" in service mode, else None


@dataclass(slots=True)
class Frame:
    """A decoded, upright photo at reduced scale, with what its header said."""

    ref: MediaRef
    media_id: str
    sha256: str
    image: Image.Image  # RGB, EXIF orientation applied, long side >= the decode target
    width: int  # full-resolution width after orientation, pixels
    height: int  # full-resolution height after orientation, pixels
    exif_datetime: datetime | None  # DateTimeOriginal, naive camera-local time (tz if EXIF had it)
    camera_make: str | None
    camera_model: str | None
    byte_size: int
    frame_number: int | None = None  # videos: this frame's 0-based index in the file


@dataclass(slots=True)
class Detection:
    """One detector box kept after NMS and thresholding, with its classification if any."""

    category: str  # animal | person | vehicle
    confidence: float
    bbox: tuple[float, float, float, float]  # relative x_min, y_min, width, height (top-left)
    label: str | None = None  # classifier label or "undefined"; None when not classified
    probability: float | None = None  # softmax probability of `label`'s top class
    top_labels: list[str] = field(default_factory=list)
    top_probabilities: list[float] = field(default_factory=list)
    logits: np.ndarray | None = None  # classifier logits, kept for sequence voting
    frame_number: int | None = None  # videos: the frame it was seen in (MegaDetector 1.6)


@dataclass(slots=True)
class MediaResult:
    """A processed photo: the frame's facts and its detections (no pixels)."""

    ref: MediaRef
    media_id: str
    sha256: str
    width: int
    height: int
    exif_datetime: datetime | None
    camera_make: str | None
    camera_model: str | None
    byte_size: int
    detections: list[Detection]


@dataclass(slots=True)
class Failure:
    """An input that could not be processed, and why. Every input ends here or in media."""

    uri: str
    deployment_id: str | None
    media_id: str | None
    stage: str  # read | decode | detect | classify | dedupe | event | write
    kind: str  # short machine-readable reason, e.g. "truncated", "not_an_image"
    message: str  # what a human needs: the input, what is wrong, what to do
    source: str | None = None
    raw_event: bytes | None = None  # service mode: the original message bytes


class StageError(Exception):
    """A stage refused one input; becomes a `Failure` with the stage and kind."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message
