"""The review screen's photo bytes: typed by their bytes, blurred at a bounded size, cached by bytes.

Why: a photo is served to a browser at the review server's origin, so its media type must be
what its bytes are (a JPEG named `trap.html` with a script in a comment is still served as
image/jpeg, and anything that is not a photo or video is refused); and a photo with people is
decoded to be blurred, which at full size costs seconds and gigabytes (a 96 MP JPEG: 4.2 s and
+1.5 GB), so it is decoded reduced (JPEG draft: the decoder skips the detail), at most a few at
a time, and the result is kept in an LRU bounded by bytes. docs/review.md, docs/security.md.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from PIL import Image, ImageOps

from trapline.services.api.storage import sniff

DISPLAY_MAX_SIDE = 2048  # a blurred photo is no larger than a screen needs
DECODE_MAX_PIXELS = 40_000_000  # after the reduced decode; larger (a huge PNG) is not blurred here
DECODE_SLOTS = 2  # photos decoded at once in this process, whichever store asks
CACHE_MAX_BYTES = 64 * 1024 * 1024  # photo bytes kept in this process, all stores together
CACHE_MAX_ITEM_BYTES = 8 * 1024 * 1024  # larger originals are read again rather than kept

_decodes = threading.BoundedSemaphore(DECODE_SLOTS)


class NotServable(ValueError):
    """Bytes that are not a photo or video this project reads: never sent to a browser."""


class TooLarge(ValueError):
    """A photo too large to blur here even decoded reduced."""


def served_type(data: bytes, name: str) -> str:
    """The media type of `data` by its first bytes (JPEG, PNG, MP4, MOV, AVI), never its name."""
    found = sniff(data[:12])
    if found is None:
        raise NotServable(f"{name}: not a JPEG, PNG, MP4, MOV or AVI file; not served")
    return found[0]


def blurred_preview(
    data: bytes, boxes: Sequence[Sequence[float]], name: str, max_side: int = DISPLAY_MAX_SIDE
) -> tuple[bytes, tuple[int, int]]:
    """A JPEG of the photo, upright, at most `max_side` on its long side, each relative
    (x, y, w, h) box pixelated and blurred; and the size the decoder produced (a JPEG is
    decoded at 1/2, 1/4 or 1/8 scale when that still covers `max_side`).

    At most DECODE_SLOTS run at once in this process; a caller waits for a slot."""
    if served_type(data, name) not in ("image/jpeg", "image/png"):
        raise NotServable(f"{name}: a video cannot be blurred here")
    with _decodes:
        with warnings.catch_warnings():
            # The reduced decode below is the guard here; Pillow's warning is about a full one.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                opened = Image.open(io.BytesIO(data))
            except Image.DecompressionBombError as error:
                raise TooLarge(f"{name}: {error}") from None
        with opened:
            width, height = opened.size
            scale = max_side / max(width, height)
            if scale < 1:
                opened.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            decoded = opened.size
            if decoded[0] * decoded[1] > DECODE_MAX_PIXELS:
                raise TooLarge(
                    f"{name}: {width:,} x {height:,} pixels is too large to blur here; "
                    "start the review with --show-people to see it unblurred"
                )
            image = ImageOps.exif_transpose(opened).convert("RGB")
        image.thumbnail((max_side, max_side))
        _blur(image, boxes)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=88)
    return out.getvalue(), decoded


def _blur(image: Image.Image, boxes: Sequence[Sequence[float]]) -> None:
    """Blur the boxes in place, as `sort` blurs its copies."""
    from trapline.services.tools.sort import blur_regions

    blur_regions(image, boxes)


class PhotoCache:
    """Least recently used photo bytes and their media type, bounded by total bytes."""

    def __init__(
        self, max_bytes: int = CACHE_MAX_BYTES, max_item_bytes: int = CACHE_MAX_ITEM_BYTES
    ):
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self.size = 0
        self._items: OrderedDict[Hashable, tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[bytes, str] | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: Hashable, data: bytes, kind: str) -> None:
        if len(data) > self.max_item_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= len(old[0])
            self._items[key] = (data, kind)
            self.size += len(data)
            while self.size > self.max_bytes:
                _, (dropped, _) = self._items.popitem(last=False)
                self.size -= len(dropped)


# One for the process: the upload API holds a store per program, and their photos share this bound.
PHOTO_CACHE = PhotoCache()
