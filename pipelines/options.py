"""What the stages need to know, as typed objects nested by concern.

Why not `Settings`: `Settings` (services/settings.py) is the operator's surface, flat because
every field is also a `TRAPLINE_*` variable and a Helm value. The stages take only these
objects, built once from it (`Settings.stage_options()`), so nothing in `pipelines/` imports
`services/`, and a test or a library user builds the options without the service's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from trapline.pipelines.events import SequenceOptions
from trapline.pipelines.fidelity import CropRounding, LetterboxMode, ResizeFilter
from trapline.pipelines.postprocess.options import PostprocessOptions


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """Reading and decoding a file: the caps that refuse a hostile one before it costs much."""

    max_file_bytes: int
    max_image_pixels: int
    decode_min_long_side: int  # 0: the detector's input size decides the DCT scale
    full_resolution: bool  # decode every pixel, as upstream does


@dataclass(frozen=True, slots=True)
class VideoOptions:
    """Which frames of a video are sampled, and how long a video may be."""

    fps: float
    max_frames: int
    max_duration_s: float


@dataclass(frozen=True, slots=True)
class DetectOptions:
    """The detector's batch, its thresholds and how its canvas is made."""

    threshold: float
    nms_iou: float
    batch_size: int
    letterbox: LetterboxMode
    resize: ResizeFilter


@dataclass(frozen=True, slots=True)
class ClassifyOptions:
    """The classifier on the animal crops: below `threshold` the label is `undefined`."""

    threshold: float
    max_crops_per_photo: int
    top_k: int
    crop_rounding: CropRounding


@dataclass(frozen=True, slots=True)
class PlaceOptions:
    """Placing a photo in time and space: the deployments file, and the clock of a camera
    that says nothing of its zone."""

    deployments_file: Path | str | None
    tz: tzinfo


@dataclass(frozen=True, slots=True)
class StageOptions:
    """Every stage's options. No defaults here: the one place for defaults is `Settings`."""

    read: ReadOptions
    video: VideoOptions
    detect: DetectOptions
    classify: ClassifyOptions
    place: PlaceOptions
    events: SequenceOptions
    postprocess: PostprocessOptions
