"""Small real photos made with Pillow, for tests (a module of its own: `conftest` names clash
between tests/ and tests/reliability/, so tests import this, never `conftest`)."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
from PIL import Image


def jpeg_bytes(
    width: int = 800,
    height: int = 600,
    *,
    when: datetime | None = None,
    orientation: int | None = None,
    make: str | None = "TestCam",
    mode: str = "RGB",
    seed: int = 0,
) -> bytes:
    """A JPEG with a left-half red / right-half blue pattern and optional EXIF."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (200, 30, 30)
    pixels[:, width // 2 :] = (30, 30, 200)
    pixels[: height // 4] += np.random.default_rng(seed).integers(
        0, 20, (height // 4, width, 3), dtype=np.uint8
    )
    image = Image.fromarray(pixels).convert(mode)
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
        exif[0x0110] = "Model-1"
    if orientation:
        exif[0x0112] = orientation
    if when:
        exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()
