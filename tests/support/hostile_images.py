"""Hostile photos made on the spot (issue 37, items 3 and 7): small files that cost a decoder
minutes of CPU or gigabytes of memory if nothing stops it."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def progressive_jpeg(width: int, height: int, *, color=(90, 120, 60)) -> bytes:
    """A real progressive JPEG from Pillow (libjpeg's default script: 10 scans)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG", quality=90, progressive=True)
    return buffer.getvalue()


def scan_bomb(width: int, height: int, repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated `repeats` times before EOI.

    A flat picture makes that scan a few bytes, while libjpeg still walks every block for it:
    1024x768 with 5,000 repeats is 65 KB and about 5 s of CPU; 36 MP with 3,000, 0.4 MB and 90 s.
    """
    data = progressive_jpeg(width, height)
    eoi = data.rindex(b"\xff\xd9")
    last_scan = data.rindex(b"\xff\xda", 0, eoi)
    return data[:eoi] + data[last_scan:eoi] * repeats + data[eoi:]


def pixel_bomb_png(width: int, height: int) -> bytes:
    """A valid RGBA PNG of `width` x `height` transparent pixels: a few hundred KB at 144 MP,
    over 1.5 GB once decoded and composited."""
    row = b"\x00" + bytes(4 * width)  # filter byte 0, then RGBA zeros
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
