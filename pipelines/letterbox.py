"""Letterbox: fit a photo into the detector's square input without distorting it.

The photo is resized to fit `size` keeping its aspect ratio and centred on a grey (114) canvas,
as YOLOv5 and MegaDetector do. Boxes come back in canvas pixels and are mapped to relative
photo coordinates with the same geometry, so `Letterbox` is the one place that knows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 114


@dataclass(frozen=True, slots=True)
class Letterbox:
    size: int  # canvas side, pixels
    scaled_w: int  # photo width on the canvas
    scaled_h: int  # photo height on the canvas
    pad_x: int  # left padding
    pad_y: int  # top padding

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        ratio = size / max(width, height)
        scaled_w = max(1, min(size, round(width * ratio)))
        scaled_h = max(1, min(size, round(height * ratio)))
        return cls(size, scaled_w, scaled_h, (size - scaled_w) // 2, (size - scaled_h) // 2)

    def draw(self, image: Image.Image, out: np.ndarray) -> None:
        """Write the letterboxed photo into `out` (size x size x 3 uint8), in place."""
        out[...] = PAD_VALUE
        resized = image.resize((self.scaled_w, self.scaled_h), Image.Resampling.BILINEAR)
        out[self.pad_y : self.pad_y + self.scaled_h, self.pad_x : self.pad_x + self.scaled_w] = (
            np.asarray(resized)
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
