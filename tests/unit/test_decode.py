import io
import struct
import zlib
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from trapline.pipelines.decode import decode_image, parse_exif_datetime
from trapline.pipelines.types import StageError

LIMIT = 50_000_000


def test_jpeg_is_decoded_at_reduced_dct_scale_but_reports_full_size(make_jpeg):
    decoded = decode_image(make_jpeg(4000, 3000), min_long_side=640, max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.image.size == (1000, 750)  # 1/4 scale: the smallest with long side >= 640
    assert decoded.image.mode == "RGB"


def test_exif_fields_are_read(make_jpeg):
    data = make_jpeg(when=datetime(2024, 5, 3, 21, 14, 2), make="Reconyx")
    decoded = decode_image(data, min_long_side=320, max_pixels=LIMIT)
    assert decoded.exif_datetime == datetime(2024, 5, 3, 21, 14, 2)
    assert decoded.camera_make == "Reconyx"
    assert decoded.camera_model == "Model-1"
    assert len(decoded.sha256) == 64


def test_exif_orientation_6_turns_the_photo_upright(make_jpeg):
    # Stored 800x600 with red on the left; orientation 6 means "rotate 90 degrees clockwise to view".
    decoded = decode_image(make_jpeg(800, 600, orientation=6), min_long_side=800, max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == (600, 800)
    pixels = np.asarray(decoded.image)
    assert pixels.shape[:2] == (800, 600)
    top, bottom = pixels[100:300, 300].mean(axis=0), pixels[-200:, 300].mean(axis=0)
    assert top[0] > 150 and bottom[2] > 150  # red (was left) is now on top


def test_truncated_jpeg_is_a_clear_error(make_jpeg):
    data = make_jpeg(1600, 1200)
    with pytest.raises(StageError) as error:
        decode_image(data[: len(data) // 3], min_long_side=320, max_pixels=LIMIT)
    assert error.value.kind in ("truncated", "corrupt")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "not_an_image"),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(100), "not_an_image"),
        (bytes(range(256)) * 10, "not_an_image"),
        (b"\xff\xd8\xff" + b"\x00" * 50, "corrupt"),
    ],
)
def test_non_photos_are_refused_with_their_kind(data, kind):
    with pytest.raises(StageError) as error:
        decode_image(data, min_long_side=320, max_pixels=LIMIT)
    assert error.value.kind == kind


def test_decompression_bomb_is_refused_from_the_header():
    # A PNG header declaring 30000 x 30000 pixels, with no pixel data at all.
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    data = header + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    data += struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))
    with pytest.raises(StageError) as error:
        decode_image(data, min_long_side=320, max_pixels=LIMIT)
    assert error.value.kind == "too_large"


def test_png_16bit_grayscale_and_cmyk_become_rgb(make_jpeg):
    gray16 = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    buffer = io.BytesIO()
    gray16.save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), min_long_side=64, max_pixels=LIMIT)
    assert decoded.image.mode == "RGB" and decoded.image.size == (64, 64)
    assert np.asarray(decoded.image).max() > 200  # top 8 bits kept, not clipped to 255 everywhere
    cmyk = decode_image(make_jpeg(400, 300, mode="CMYK"), min_long_side=200, max_pixels=LIMIT)
    assert cmyk.image.mode == "RGB"
    gray = decode_image(make_jpeg(400, 300, mode="L"), min_long_side=200, max_pixels=LIMIT)
    assert gray.image.mode == "RGB"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024:05:03 21:14:02", datetime(2024, 5, 3, 21, 14, 2)),
        ("2024:05:03 21:14:02\x00", datetime(2024, 5, 3, 21, 14, 2)),
        ("0000:00:00 00:00:00", None),
        ("1970:01:01 00:00:00", None),
        ("garbage", None),
        (b"\xff\xfe", None),
        (12345, None),
    ],
)
def test_exif_datetime_parsing_never_raises(raw, expected):
    assert parse_exif_datetime(raw) == expected


def test_exif_offset_tag_makes_timestamp_aware():
    parsed = parse_exif_datetime("2024:05:03 21:14:02", "+02:00")
    assert parsed is not None and parsed.utcoffset().total_seconds() == 7200


SECRET = b"Dear Ana, the wolf den is at 45.1234N 6.5432E"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (SECRET, "a text file"),
        (b"%PDF-1.7\n" + SECRET, "a PDF document"),
        (b"\x00\x00\x00\x1cftypheic" + SECRET, "HEIC"),
        (b"\x00\x00\x00\x18ftypmp42" + SECRET, "MP4/MOV video"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + SECRET, "a WebP image"),
        (b"GIF89a" + SECRET, "a GIF image"),
        (bytes([0x93, 0x42, 0x17, 0xE5, 0x00, 0x9A, 0x11, 0x07]) + SECRET, "unrecognised content"),
    ],
)
def test_a_non_photo_is_named_by_kind_without_any_of_its_bytes(data, what):
    with pytest.raises(StageError) as error:
        decode_image(data, min_long_side=320, max_pixels=LIMIT)
    reason = error.value.message
    assert error.value.kind == "not_an_image" and what in reason
    for leak in (data[:8].hex(), data[:4].hex(), "Dear Ana", "wolf", "45.1234"):
        assert leak not in reason
    assert repr(data[:4])[2:-1] not in reason  # nor the bytes as Python would quote them


def test_a_broken_png_chunk_is_reported_without_the_chunk_bytes():
    """Pillow quotes the chunk id it choked on (b'...'); the reason keeps the words only."""

    def chunk(cid: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + cid + body + struct.pack(">I", zlib.crc32(cid + body))

    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    png = buffer.getvalue()
    start = png.index(b"IDAT") - 4
    size = struct.unpack(">I", png[start : start + 4])[0]
    idat = png[start + 8 : start + 8 + size]
    # The image data continues in a chunk whose id is not a chunk id (bytes of the file).
    data = png[:start] + chunk(b"IDAT", idat[: size // 2]) + chunk(b"\x01wo\xff", idat[size // 2 :])
    with pytest.raises(StageError) as error:
        decode_image(data + chunk(b"IEND", b""), min_long_side=64, max_pixels=LIMIT)
    reason = error.value.message
    assert error.value.kind == "corrupt" and "broken PNG file" in reason
    assert "\\x01" not in reason and "\\xff" not in reason and "wo" not in reason, reason
