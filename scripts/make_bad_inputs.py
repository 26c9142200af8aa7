"""Build the bad-input corpus in tests/data/bad_inputs/: files a camera card or a portal really
delivers that are not clean RGB JPEGs, each with the outcome the pipeline owes it.

    python scripts/make_bad_inputs.py [OUT]      (default: tests/data/bad_inputs)

Writes the files under OUT/cam-bad/ (one deployment) and OUT/expected.json: per file either
`{"outcome": "failure", "stage": ..., "kind": ...}` or `{"outcome": "media", "width": ...,
"height": ...}` (valid but unusual photos must become correct media rows). Seeded, so a re-run
gives the same corpus; the bytes may differ with another libjpeg, the outcomes may not.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "bad_inputs"
DEPLOYMENT = "cam-bad"
WIDTH, HEIGHT = 160, 120  # small: the corpus is committed


def _pixels(seed: int = 0) -> np.ndarray:
    """A photo-like pattern (gradient + noise) so JPEG has something to encode."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, (x + y) * 255 // (WIDTH + HEIGHT)], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, **options)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(side: int) -> bytes:
    """A PNG whose header declares side x side RGB pixels (2.7 GB at 30,000) in a few hundred
    bytes: one compressed row of zeros. Decoding it would allocate the lot; it must be refused
    from the header."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" * (1 + 3 * side), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", row)
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bomb(side: int) -> bytes:
    """A small real JPEG whose SOF marker is rewritten to declare side x side pixels."""
    data = bytearray(_jpeg(Image.fromarray(_pixels(3))))
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            struct.pack_into(">HH", data, at + 5, side, side)  # length(2) precision(1) H W
            return bytes(data)
    raise RuntimeError("no SOF marker in the seed JPEG")


def _ifd(entries: list[tuple[int, int, int, bytes]], at: int, next_ifd: int = 0) -> bytes:
    """A big-endian TIFF IFD at offset `at`: (tag, type, count, value bytes); values longer
    than 4 bytes go right after the IFD. Written by hand so the types can be wrong."""
    table, extra = b"", b""
    data_at = at + 2 + 12 * len(entries) + 4
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            table += struct.pack(">HHI", tag, kind, count) + value.ljust(4, b"\x00")
        else:
            table += struct.pack(">HHII", tag, kind, count, data_at + len(extra))
            extra += value + b"\x00" * (len(value) % 2)
    return struct.pack(">H", len(entries)) + table + struct.pack(">I", next_ifd) + extra


def _with_app1(jpeg: bytes, tiff: bytes) -> bytes:
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]  # right after SOI


def _garbage_exif_values() -> bytes:
    """EXIF that parses but says nonsense, with types no camera should write: Orientation as
    text, Make as binary, a tag of unknown type 99, a DateTimeOriginal that is no date and an
    OffsetTimeOriginal that is no offset."""
    ascii_, undefined = 2, 7
    sub_at = 8 + 2 + 12 * 4 + 4 + 16 + 16  # after IFD0 and its two out-of-line values
    ifd0 = _ifd(
        [
            (0x010F, undefined, 10, b"\xff\xfe\x00\x01junk\x00\x00"),  # Make
            (0x0112, ascii_, 9, b"sideways\x00"),  # Orientation: must be SHORT 1-8
            (0x8769, 4, 1, struct.pack(">I", sub_at)),  # Exif sub-IFD pointer
            (0xC000, 99, 3, b"\x01\x02\x03"),  # a private tag of a type that does not exist
        ],
        at=8,
    )
    ifd0 = ifd0.ljust(sub_at - 8, b"\x00")
    sub = _ifd(
        [
            (0x9003, ascii_, 20, b"2024:13:45 99:99:99\x00"),  # DateTimeOriginal
            (0x9011, ascii_, 7, b"+xx:yy\x00"),  # OffsetTimeOriginal
        ],
        at=sub_at,
    )
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd0 + sub
    return _with_app1(_jpeg(Image.fromarray(_pixels(4))), tiff)


def _broken_exif_ifd() -> bytes:
    """An APP1 Exif segment whose TIFF header points its first IFD far past the segment's end."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 0x00FFFFF0) + b"\x00" * 8
    return _with_app1(_jpeg(Image.fromarray(_pixels(5))), tiff)


def _rotated() -> bytes:
    """Stored 160 x 120 landscape with Orientation 6 (rotate 90 CW to view): upright 120 x 160."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 06:30:00"
    return _jpeg(Image.fromarray(_pixels(6)), exif=exif)


def _mp4_head() -> bytes:
    """The first boxes of an MP4 (ftyp + an empty mdat): what a camera's video clip starts with."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
    return ftyp + struct.pack(">I", 8 + 4096) + b"mdat" + bytes(range(256)) * 16


def corpus() -> dict[str, tuple[bytes, dict]]:
    """file name -> (bytes, expected outcome)."""
    rng = np.random.default_rng(1234)
    good = _jpeg(Image.fromarray(_pixels(1)))
    gray16 = (np.arange(WIDTH * HEIGHT, dtype=np.uint32).reshape(HEIGHT, WIDTH) * 7 % 65536).astype(
        np.uint16
    )

    def fail(stage: str, kind: str) -> dict:
        return {"outcome": "failure", "stage": stage, "kind": kind}

    def media(width: int = WIDTH, height: int = HEIGHT) -> dict:
        return {"outcome": "media", "width": width, "height": height}

    return {
        "truncated.jpg": (good[: len(good) // 2], fail("decode", "truncated")),
        "zero_byte.jpg": (b"", fail("decode", "empty")),
        "random_bytes.jpg": (
            rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            fail("decode", "not_an_image"),
        ),
        "page.jpg": (
            b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n",
            fail("decode", "not_an_image"),
        ),
        "clip.jpg": (_mp4_head(), fail("decode", "not_an_image")),
        "clip.mp4": (_mp4_head(), fail("decode", "not_a_video")),  # a video, but not a readable one
        "bomb.png": (_png_bomb(30_000), fail("decode", "too_large")),
        "bomb.jpg": (_jpeg_bomb(30_000), fail("decode", "too_large")),
        "cmyk.jpg": (_jpeg(Image.fromarray(_pixels(7)).convert("CMYK")), media()),
        "grayscale.jpg": (_jpeg(Image.fromarray(_pixels(8)).convert("L")), media()),
        "gray16.png": (_png(Image.fromarray(gray16)), media()),
        "exif_rotated.jpg": (_rotated(), media(HEIGHT, WIDTH)),
        "exif_garbage_values.jpg": (_garbage_exif_values(), media()),
        "exif_broken_ifd.jpg": (_broken_exif_ifd(), media()),
    }


def write_corpus(out: Path) -> dict[str, dict]:
    """Write every file and expected.json under `out`; returns the expectations."""
    folder = out / DEPLOYMENT
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, outcome) in corpus().items():
        (folder / name).write_bytes(data)
        expected[name] = outcome
    (out / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    return expected


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    written = write_corpus(target)
    print(f"{len(written)} files in {target / DEPLOYMENT}")
