"""Name what a file that is not a photo is, in words, never with its bytes.

A failure reason ends up in the failures table and in a dead-letter header, both read by
people who never saw the file and may not be allowed to: so the reason says "a PDF document",
not the first bytes (which for a private upload can be its content). Only fixed words from the
table below are ever returned, whatever the input is.
"""

from __future__ import annotations

import re

# (offset, signature, what it is). The first match wins; signatures are public magic numbers.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"BM", "a BMP image"),
    (0, b"II*\x00", "a TIFF image or camera RAW file"),
    (0, b"MM\x00*", "a TIFF image or camera RAW file"),
    (0, b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (0, b"8BPS", "a Photoshop document"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"Rar!", "a RAR archive"),
    (0, b"\x1a\x45\xdf\xa3", "a Matroska or WebM video"),
    (0, b"OggS", "an Ogg media file"),
    (0, b"ID3", "an MP3 audio file"),
    (0, b"fLaC", "a FLAC audio file"),
    (0, b"\x7fELF", "an executable (ELF)"),
    (0, b"MZ", "an executable (Windows)"),
    (0, b"SQLite format 3\x00", "an SQLite database"),
    (0, b"PAR1", "a Parquet file"),
)
_RIFF = {b"WEBP": "a WebP image", b"AVI ": "an AVI video", b"WAVE": "a WAV audio file"}
_FTYP_IMAGES = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_TEXT = re.compile(rb"[\t\n\r\x20-\x7e]*")


def describe(data: bytes) -> str:
    """'a PDF document', 'an HTML page', 'a HEIC/AVIF image', ... or 'unrecognised content'."""
    if data[:4] == b"RIFF" and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[4:8] == b"ftyp":
        if data[8:12] in _FTYP_IMAGES:
            return "a HEIC/HEIF or AVIF image (convert to JPEG)"
        return "an MP4/MOV video"
    for offset, signature, what in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return what
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "an XML or SVG document"
    if head.startswith((b"{", b"[")):
        return "JSON or other text"
    sample = data[:512]
    if sample and _TEXT.fullmatch(sample):
        return "a text file"
    return f"unrecognised content ({len(data):,} bytes)"


_BYTES_LITERAL = re.compile(r"""b(['"])(?:\\.|(?!\1).){0,200}?\1""")


def without_bytes(message: str) -> str:
    """A library's error message with any bytes literal it quoted (b'...') blanked out: Pillow
    quotes chunk ids and markers of the file it failed on."""
    return _BYTES_LITERAL.sub("<bytes>", message)
