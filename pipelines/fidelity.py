"""Reference-behaviour switches: answer as MegaDetector / DeepFaune do, or as fast as we can.

Trapline's own pre-processing makes three speed choices where upstream does otherwise. Each is
one switch, and a profile sets all three at once (`services/settings.py`: `profile`, overridden
per switch):

- `letterbox`: `square` pads every photo to the detector's S x S input (one batch shape, any
  exported model); `rectangle` pads only up to the next multiple of the model's stride, as
  MegaDetector's own inference does (megadetector/detection/pytorch_detector.py,
  `PTDetector.generate_detections_one_image`, default `classic` mode: YOLOv5's
  utils/augmentations.py `letterbox(img, new_shape=image_size, stride=64, auto=True,
  scaleup=True)`) and ultralytics' predictor (ultralytics/engine/predictor.py
  `BasePredictor.pre_transform`: `LetterBox(imgsz, auto=True for PyTorch models,
  stride=model.stride)`): a 4:3 photo at 1280 becomes 1280 x 960, not 1280 x 1280. Costs: the
  detector must accept any H and W (ONNX dynamic axes), and photos of different shapes are
  separate detector calls.
- `crop_rounding`: `round` rounds the square crop's edges to the nearest pixel; `truncate`
  does what DeepFaune does with MegaDetector boxes (detectTools.py,
  `DetectorJSON.convertJSONboxToBox` then `cropSquareCVtoPIL`): int() on every pixel value,
  so crops lean up and left by up to a pixel. Costs nothing.
- `full_resolution`: false decodes JPEGs at the smallest DCT scale the detector and crops need
  (pipelines/decode.py); true decodes every pixel and resizes from there, as upstream does
  (both read the whole photo with cv2/PIL, then resize). Costs the full decode: 100-230 ms for
  a 12 MP JPEG on one core against a few ms, and 36 MB of RGB per photo held until the crops.
- `resize`: `pillow` resizes the photo into the detector canvas with Pillow's bilinear filter,
  which antialiases when it shrinks; `opencv` uses OpenCV's `cv2.resize(..., INTER_LINEAR)`,
  which does not, as YOLOv5's `letterbox` (MegaDetector) and ultralytics' `LetterBox` do. On a
  2048 px photo shrunk to 1280 the two differ by many grey levels along edges, enough to move
  boxes and scores (tests/integration/test_upstream_fidelity.py). Costs the `opencv-python-headless` package
  (the `reference` extra); no time: it is faster than Pillow's (8 against 33 ms for a
  2048 x 1440 photo to 1280 x 900 on one core), as it does not antialias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LetterboxMode = Literal["square", "rectangle"]
CropRounding = Literal["round", "truncate"]
ProfileName = Literal["fast", "reference"]
ResizeFilter = Literal["pillow", "opencv"]


@dataclass(frozen=True, slots=True)
class Fidelity:
    letterbox: LetterboxMode  # detector input: square S x S, or the stride-multiple rectangle
    crop_rounding: CropRounding  # classifier crop edges: nearest pixel, or DeepFaune's int()
    full_resolution: bool  # decode every pixel (upstream) or the smallest DCT scale needed
    resize: ResizeFilter  # detector canvas resize: Pillow bilinear (antialiased) or OpenCV's


PROFILES: dict[str, Fidelity] = {
    # Throughput: today's behaviour and the default (docs/models.md, "Reference behaviour").
    "fast": Fidelity(
        letterbox="square", crop_rounding="round", full_resolution=False, resize="pillow"
    ),
    # Same pixels into the models as MegaDetector and DeepFaune feed theirs.
    "reference": Fidelity(
        letterbox="rectangle", crop_rounding="truncate", full_resolution=True, resize="opencv"
    ),
}


def require_resize(resize: ResizeFilter) -> None:
    """Refuse at start, not on the first photo, when `resize: opencv` has no OpenCV."""
    if resize == "opencv":
        try:
            import cv2  # noqa: F401
        except ImportError:
            raise ValueError(
                "resize: opencv (set by profile: reference) needs OpenCV: pip install "
                "'trapline[reference]' (opencv-python-headless), or set resize: pillow"
            ) from None
