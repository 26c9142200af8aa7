"""Decode stage: bytes -> upright RGB image at the smallest size the models need, plus EXIF.

A 12 MP JPEG costs 100-230 ms to decode at full size on one core; at 1/4 or 1/8 DCT scale it
costs a few ms. Pillow's `draft` picks the largest libjpeg scale reduction that still leaves the
image at least as big as asked, so we ask for exactly what the detector letterbox and the
classifier crops need. Size limits are checked on the header, before any pixel is decoded, so a
decompression bomb is refused without costing memory.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from PIL import Image, UnidentifiedImageError

from trapline.pipelines.decode_budget import DECODE_TIME_LIMIT_S, BudgetedReader, jpeg_scan_offsets
from trapline.pipelines.file_kind import describe, without_bytes
from trapline.pipelines.types import StageError

# min_long_side that no photo reaches: every pixel decoded, no DCT or PNG reduction
# (`full_resolution`, pipelines/fidelity.py).
FULL_RESOLUTION = 1 << 30

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_ORIENTATION = 0x0112
_MAKE = 0x010F
_MODEL = 0x0110
_DATETIME = 0x0132
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011

# EXIF orientation -> the PIL transpose that makes the picture upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(slots=True)
class Decoded:
    image: Image.Image  # RGB, upright, long side >= the requested long side when the photo allows
    width: int  # full-resolution width after orientation
    height: int  # full-resolution height after orientation
    exif_datetime: datetime | None
    camera_make: str | None
    camera_model: str | None
    sha256: str


def sniff_format(data: bytes) -> str:
    """Tell JPEG and PNG from the magic bytes; names and Content-Type headers lie."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if not data:
        raise StageError("empty", "zero-byte file")
    # The reason reaches the failures table and dead-letter headers: words, never input bytes.
    raise StageError("not_an_image", f"not a JPEG or PNG photo: {describe(data)}")


def decode_image(data: bytes, *, min_long_side: int, max_pixels: int) -> Decoded:
    """Decode a JPEG or PNG so that its long side is at least `min_long_side` (if it was).

    Raises StageError with kind `empty`, `not_an_image`, `too_large`, `decode_budget` (too many
    JPEG scans, or decoding past its time: pipelines/decode_budget.py), `corrupt` or `truncated`.
    """
    fmt = sniff_format(data)
    reader = BudgetedReader(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            img = Image.open(reader, formats=[fmt.upper()])
    except Image.DecompressionBombError as error:
        raise StageError("too_large", f"refused before decoding: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = without_bytes(str(error))
        raise StageError("corrupt", f"unreadable {fmt.upper()} header: {reason}") from None

    stored_w, stored_h = img.size
    # The pixels that will sit in memory: a baseline JPEG of one scan is decoded straight to the
    # reduced DCT scale (`draft`); a progressive or multi-scan one keeps every coefficient of
    # the full image until its last scan, and a PNG is decoded at full size.
    held_w, held_h = stored_w, stored_h
    scans: list[int] = []  # where a progressive or multi-scan JPEG's scans start
    if fmt == "jpeg":
        one_scan = not img.info.get("progressive") and _first_scan_components(data) == img.layers
        if not one_scan:
            scans = jpeg_scan_offsets(data, stored_w, stored_h)
        scale = max(1.0, max(stored_w, stored_h) / max(min_long_side, 1))
        try:
            img.draft("RGB", (int(stored_w / scale), int(stored_h / scale)))
        except (OSError, ValueError) as error:
            raise StageError("corrupt", f"corrupt JPEG: {without_bytes(str(error))}") from None
        if one_scan:
            held_w, held_h = img.size
    if held_w * held_h > max_pixels:
        reduced = "" if (held_w, held_h) == (stored_w, stored_h) else f" at {held_w}x{held_h}"
        raise StageError(
            "too_large",
            f"{stored_w}x{stored_h}{reduced} = {held_w * held_h / 1e6:.0f} MP exceeds the "
            f"{max_pixels / 1e6:.0f} MP limit (settings.max_image_pixels); refused before decoding",
        )

    reader.start(DECODE_TIME_LIMIT_S, scans)
    try:
        img.load()
    except OSError as error:
        kind = "truncated" if "truncated" in str(error) else "corrupt"
        raise StageError(kind, f"corrupt {fmt.upper()}: {without_bytes(str(error))}") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise StageError("corrupt", f"corrupt {fmt.upper()}: {without_bytes(str(error))}") from None

    # After the load: a PNG's EXIF may follow its pixels, and Pillow loads them to find it.
    exif = _read_exif(img)
    orientation = exif["orientation"]
    width, height = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
    image = _to_rgb(img)
    if fmt == "png":
        factor = max(stored_w, stored_h) // max(min_long_side, 1)
        if factor >= 2:
            image = image.reduce(factor)
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
    return Decoded(
        image=image,
        width=width,
        height=height,
        exif_datetime=exif["datetime"],
        camera_make=exif["make"],
        camera_model=exif["model"],
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _first_scan_components(data: bytes) -> int:
    """How many components the JPEG's first scan holds (all of them: one interleaved scan);
    0 where the header cannot be walked, which counts as several scans."""
    pos = 2
    while pos + 4 < len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return data[pos + 4]
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return 0


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: CMYK, grayscale, palette, 16-bit (I;16) and alpha included."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: keep the top 8 bits rather than clipping at 255.
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # no copy: 4 bytes a pixel
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _read_exif(img: Image.Image) -> dict:
    """Orientation, camera and capture time; garbage tags give None, never an exception."""
    result: dict = {"orientation": 1, "make": None, "model": None, "datetime": None}
    try:
        exif = img.getexif()
        orientation = exif.get(_ORIENTATION, 1)
        result["orientation"] = orientation if orientation in range(1, 9) else 1
        result["make"] = _clean_text(exif.get(_MAKE))
        result["model"] = _clean_text(exif.get(_MODEL))
        sub = exif.get_ifd(_EXIF_IFD)
        raw_time = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        result["datetime"] = parse_exif_datetime(raw_time, sub.get(_OFFSET_TIME_ORIGINAL))
    except Exception:  # noqa: BLE001 - EXIF in the wild is arbitrary bytes; it must not fail a photo
        pass
    return result


def _clean_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    value = "".join(c for c in value if c.isprintable()).strip()  # garbage tags carry control bytes
    return value[:64] or None


def parse_exif_datetime(value: object, offset: object = None) -> datetime | None:
    """'YYYY:MM:DD HH:MM:SS' (+ optional '+HH:MM' offset tag) -> datetime, else None."""
    text = _clean_text(value)
    if not text:
        return None
    try:
        parsed = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if parsed.year < 1990:  # a camera whose clock battery died restarts at its epoch
        return None
    offset_text = _clean_text(offset)
    if offset_text and len(offset_text) == 6 and offset_text[0] in "+-":
        try:
            hours, minutes = int(offset_text[1:3]), int(offset_text[4:6])
        except ValueError:
            return parsed
        sign = 1 if offset_text[0] == "+" else -1
        return parsed.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    return parsed
