"""Decode under a budget (issue 37, items 3 and 7): scan bombs and pixel bombs are refused from
their structure, fast, while ordinary photos decode exactly as Pillow decodes them."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from support.hostile_images import pixel_bomb_png, progressive_jpeg, scan_bomb

from trapline.pipelines import decode, decode_budget
from trapline.pipelines.decode import decode_image
from trapline.pipelines.decode_budget import MAX_JPEG_SCANS, jpeg_scan_offsets
from trapline.pipelines.types import StageError
from trapline.services.settings import Settings

REPO = Path(__file__).resolve().parents[2]
LIMIT = Settings().max_image_pixels
REAL_PHOTOS = sorted(
    p
    for root in ("tests/data/real_photos", "examples/photos")
    for p in (REPO / root).rglob("*")
    if p.suffix.lower() in (".jpg", ".jpeg") and p.name != "corrupt.jpg"
)


def _refused(data: bytes, **kwargs) -> tuple[StageError, float]:
    started = time.perf_counter()
    with pytest.raises(StageError) as error:
        decode_image(data, min_long_side=kwargs.get("side", 640), max_pixels=LIMIT)
    return error.value, time.perf_counter() - started


def test_pillow_progressive_jpegs_have_the_ten_scans_of_libjpegs_script():
    assert len(jpeg_scan_offsets(progressive_jpeg(640, 480), 640, 480)) == 10


def test_a_repeated_progressive_scan_is_refused_before_decoding_in_well_under_a_second():
    bomb = scan_bomb(1024, 768, 5_000)  # 65 KB; about 5 s of CPU if decoded
    error, seconds = _refused(bomb)
    assert error.kind == "decode_budget"
    assert f"limit of {MAX_JPEG_SCANS} scans" in error.message
    assert seconds < 0.2


def test_fewer_repeated_scans_of_a_36_mp_photo_exceed_the_scan_megapixel_budget():
    bomb = scan_bomb(7360, 4912, 60)  # 70 scans: under the scan cap, about 3 s of CPU
    error, seconds = _refused(bomb)
    assert error.kind == "decode_budget" and "scan-megapixels" in error.message
    assert "2,000" in error.message and "7360x4912" in error.message
    assert seconds < 0.2


def test_a_decode_past_its_time_limit_is_stopped_between_scans(monkeypatch):
    """With the structural caps lifted, the deadline alone stops a 5 s bomb."""
    monkeypatch.setattr(decode_budget, "MAX_JPEG_SCANS", 10**6)
    monkeypatch.setattr(decode_budget, "MAX_SCAN_MEGAPIXELS", 10**9)
    monkeypatch.setattr(decode, "DECODE_TIME_LIMIT_S", 0.2)
    error, seconds = _refused(scan_bomb(1024, 768, 5_000))
    assert error.kind == "decode_budget" and "limit of 0.2 s" in error.message
    assert seconds < 0.6


def _pillow(data: bytes, side: int) -> Image.Image:
    """Plain Pillow: open, draft to the smallest DCT scale >= side, load, RGB, upright."""
    img = Image.open(io.BytesIO(data))
    scale = max(1.0, max(img.size) / side)
    img.draft("RGB", (int(img.width / scale), int(img.height / scale)))
    return ImageOps.exif_transpose(img.convert("RGB"))


def _ordinary() -> list[tuple[str, bytes]]:
    pixels = np.random.default_rng(3).integers(0, 255, (900, 1200, 3), dtype=np.uint8)
    made = []
    for progressive in (False, True):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85, progressive=progressive)
        made.append((f"progressive={progressive}", buffer.getvalue()))
    return made + [(str(p.relative_to(REPO)), p.read_bytes()) for p in REAL_PHOTOS]


@pytest.mark.parametrize("side", [640, decode.FULL_RESOLUTION])
def test_ordinary_baseline_progressive_and_real_photos_decode_exactly_as_pillow_does(side):
    assert len(REAL_PHOTOS) >= 10
    for name, data in _ordinary():
        got = decode_image(data, min_long_side=side, max_pixels=LIMIT).image
        want = _pillow(data, side)
        assert got.size == want.size and got.tobytes() == want.tobytes(), name


def test_a_tiny_png_declaring_144_mp_is_refused_from_its_header():
    bomb = pixel_bomb_png(12_000, 12_000)  # 0.56 MB; 1.8 GB of worker memory when decoded
    error, seconds = _refused(bomb)
    assert error.kind == "too_large"
    assert "12000x12000 = 144 MP exceeds the 80 MP limit" in error.message
    assert seconds < 0.2


def test_a_big_baseline_jpeg_is_decoded_at_reduced_scale_but_refused_at_full_size_or_progressive():
    """10000x9000 = 90 MP: over the limit at full size; a baseline JPEG decoded at 1/8 scale
    holds 1.4 MP, so it passes; a progressive one holds every coefficient, so it does not."""
    buffer = io.BytesIO()
    Image.new("RGB", (10_000, 9_000), (90, 120, 60)).save(buffer, "JPEG", quality=80)
    decoded = decode_image(buffer.getvalue(), min_long_side=1280, max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == (10_000, 9_000)
    assert decoded.image.size == (2500, 2250)  # 1/4 scale: 5.6 MP held
    error, _ = _refused(buffer.getvalue(), side=decode.FULL_RESOLUTION)
    assert error.kind == "too_large" and "90 MP exceeds the 80 MP limit" in error.message
    error, _ = _refused(progressive_jpeg(10_000, 9_000))
    assert error.kind == "too_large" and "10000x9000 = 90 MP" in error.message
