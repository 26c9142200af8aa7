"""Letterbox: fit a photo into the detector's input without distorting it.

The photo is resized to fit `size` keeping its aspect ratio and centred on a grey (114) canvas,
as YOLOv5 and MegaDetector do. Boxes come back in canvas pixels and are mapped to relative
photo coordinates with the same geometry, so `Letterbox` is the one place that knows it.

Two canvases (pipelines/fidelity.py): `fit` pads to the square S x S, every photo one batch
shape; `fit_rectangle` pads only to the next multiple of the model's stride, the minimum
rectangle of YOLOv5's utils/augmentations.py `letterbox(..., auto=True)` (what MegaDetector's
`PTDetector.generate_detections_one_image` calls in its default `classic` mode) and of
ultralytics' `LetterBox(auto=True)` (ultralytics/data/augment.py, the predictor's choice for
PyTorch models). Both share upstream's arithmetic: scaled side = round(side x S / long side),
then half the padding each side, the odd pixel going right / down
(`top = round(dh - 0.1)`, `bottom = round(dh + 0.1)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 114


@dataclass(frozen=True, slots=True)
class Letterbox:
    size: int  # the model's nominal input side, pixels: the long side of the scaled photo
    scaled_w: int  # photo width on the canvas
    scaled_h: int  # photo height on the canvas
    pad_x: int  # left padding
    pad_y: int  # top padding
    canvas_w: int = 0  # canvas width; 0: size (square)
    canvas_h: int = 0  # canvas height; 0: size (square)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the canvas: what the detector is fed."""
        return (self.canvas_h or self.size, self.canvas_w or self.size)

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        """The square S x S canvas (YOLOv5 `letterbox(auto=False)`)."""
        scaled_w, scaled_h = _scaled(width, height, size)
        return cls(size, scaled_w, scaled_h, (size - scaled_w) // 2, (size - scaled_h) // 2)

    @classmethod
    def fit_rectangle(cls, width: int, height: int, size: int, stride: int) -> Letterbox:
        """The minimum stride-multiple rectangle (YOLOv5 `letterbox(auto=True)`, ultralytics
        `LetterBox(auto=True)`): padding = (S - scaled side) mod stride, split in two."""
        scaled_w, scaled_h = _scaled(width, height, size)
        canvas_w = scaled_w + (size - scaled_w) % stride
        canvas_h = scaled_h + (size - scaled_h) % stride
        return cls(
            size,
            scaled_w,
            scaled_h,
            (canvas_w - scaled_w) // 2,
            (canvas_h - scaled_h) // 2,
            canvas_w,
            canvas_h,
        )

    def draw(self, image: Image.Image, out: np.ndarray, resize: str = "pillow") -> None:
        """Write the letterboxed photo into `out` (canvas_h x canvas_w x 3 uint8), in place.

        `resize`: "pillow" (bilinear, antialiased when shrinking) or "opencv" (`cv2.resize`
        INTER_LINEAR, as YOLOv5 / MegaDetector and ultralytics letterbox; pipelines/fidelity.py).
        """
        out[...] = PAD_VALUE
        size = (self.scaled_w, self.scaled_h)
        if resize == "opencv":
            import cv2

            pixels = np.asarray(image)
            resized = (
                pixels
                if pixels.shape[1::-1] == size
                else cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
            )
        else:
            resized = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
        out[self.pad_y : self.pad_y + self.scaled_h, self.pad_x : self.pad_x + self.scaled_w] = (
            resized
        )

    def to_relative(self, xyxy: np.ndarray) -> np.ndarray:
        """Canvas-pixel boxes (N, 4: x1 y1 x2 y2) -> relative (N, 4: x y w h), clipped to the photo."""
        x1 = np.clip((xyxy[:, 0] - self.pad_x) / self.scaled_w, 0.0, 1.0)
        y1 = np.clip((xyxy[:, 1] - self.pad_y) / self.scaled_h, 0.0, 1.0)
        x2 = np.clip((xyxy[:, 2] - self.pad_x) / self.scaled_w, 0.0, 1.0)
        y2 = np.clip((xyxy[:, 3] - self.pad_y) / self.scaled_h, 0.0, 1.0)
        return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)

    def to_canvas(self, xywh_relative: np.ndarray) -> np.ndarray:
        """Relative (N, 4: x y w h) -> canvas pixels (N, 4: x1 y1 x2 y2); inverse of to_relative."""
        x1 = xywh_relative[:, 0] * self.scaled_w + self.pad_x
        y1 = xywh_relative[:, 1] * self.scaled_h + self.pad_y
        x2 = x1 + xywh_relative[:, 2] * self.scaled_w
        y2 = y1 + xywh_relative[:, 3] * self.scaled_h
        return np.stack([x1, y1, x2, y2], axis=1)


def _scaled(width: int, height: int, size: int) -> tuple[int, int]:
    ratio = size / max(width, height)
    return (
        max(1, min(size, round(width * ratio))),
        max(1, min(size, round(height * ratio))),
    )
