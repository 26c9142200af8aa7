"""What one photo may cost to decode, checked before and during the decode (issue 37, item 3).

A progressive JPEG is a series of scans, each refining every 8x8 block, and libjpeg decodes every
scan it is given: a file that repeats its last scan thousands of times is a few hundred KB and
costs minutes of CPU (36 MP: about 45 ms a scan on one core). Real encoders write few scans:
libjpeg's and libjpeg-turbo's default progression (`jpeg_simple_progression`, used by Pillow,
cjpeg and jpegtran) has 10 for colour and 6 for grayscale (2 + 4 per component otherwise: 18 for
CMYK); mozjpeg's and jpegli's scripts are of the same order; a baseline JPEG has 1 scan, or 1 per
component, and libjpeg refuses a second scan in a baseline JPEG whose first scan holds every
component (4 ms for 5,000 repeats), so only progressive and multi-scan JPEGs are checked. Two
checks refuse a hostile one before any pixel is decoded:

- at most `MAX_JPEG_SCANS` scans, counted as the start-of-scan markers (FF DA) in the whole file:
  every scan libjpeg decodes starts with those two bytes (entropy-coded data never holds them),
  so metadata (an EXIF thumbnail) can only add to the count, never hide a scan;
- at most `MAX_SCAN_MEGAPIXELS` scans x megapixels, because a scan's cost grows with the image:
  10 scans of a 100 MP photo pass, 100 scans of a 36 MP one do not.

Neither Pillow nor a thread can interrupt libjpeg once it runs, so the time limit works between
the decoder's reads: `BudgetedReader` hands a JPEG to the decoder one scan at a time (libjpeg
decodes what it has, then asks for more) and, once `DECODE_TIME_LIMIT_S` has passed, refuses to
read on. A scan or a 64 KB block is the most work that can run past the limit; the checks
above keep a scan's work small.

The limits are constants, not settings: no real camera comes near them, and the stages' options
(pipelines/options.py) stay the caps an operator tunes.
"""

from __future__ import annotations

import bisect
import io
import time
from collections.abc import Sequence

from trapline.pipelines.types import StageError

MAX_JPEG_SCANS = 100  # 10x what libjpeg's progressive script writes
MAX_SCAN_MEGAPIXELS = 2_000  # scans x megapixels: 20 scans of 100 MP, 55 of 36 MP, 100 of 20 MP
DECODE_TIME_LIMIT_S = 10.0  # a 100 MP photo decodes at full size in about 2 s on one core

SOS = b"\xff\xda"  # start of scan


def jpeg_scan_offsets(
    data: bytes,
    width: int,
    height: int,
    *,
    max_scans: int | None = None,
    max_scan_megapixels: float | None = None,
) -> list[int]:
    """Where the JPEG's scans start (an upper bound), or StageError `decode_budget` above a
    limit. One pass over the bytes (about 1 ms a MB), stopped at the first scan over the cap."""
    max_scans = MAX_JPEG_SCANS if max_scans is None else max_scans
    max_scan_megapixels = (
        MAX_SCAN_MEGAPIXELS if max_scan_megapixels is None else max_scan_megapixels
    )
    offsets: list[int] = []
    at = data.find(SOS)
    while at >= 0:
        offsets.append(at)
        if len(offsets) > max_scans:
            raise StageError(
                "decode_budget",
                f"JPEG with more than {max_scans} scans exceeds the limit of {max_scans} scans "
                "per photo (encoders write about 10; repeated scans are a decode bomb); "
                "refused before decoding",
            )
        at = data.find(SOS, at + 2)
    work = len(offsets) * width * height / 1e6
    if work > max_scan_megapixels:
        raise StageError(
            "decode_budget",
            f"JPEG with {len(offsets)} scans of {width}x{height} = {work:,.0f} scan-megapixels "
            f"exceeds the limit of {max_scan_megapixels:,.0f} (scans x megapixels per photo); "
            "refused before decoding",
        )
    return offsets


class BudgetedReader(io.BytesIO):
    """The file the decoder reads: after `start()`, a deadline, and one JPEG scan per read.

    Before `start()` it is a plain BytesIO, so Pillow parses the header as usual.
    """

    def __init__(self, data: bytes):
        super().__init__(data)
        self._deadline: float | None = None
        self._limit_s = 0.0
        self._scans: Sequence[int] = ()

    def start(self, time_limit_s: float, scan_offsets: Sequence[int] = ()) -> None:
        """From now on, refuse to read past `time_limit_s`, and end each read before a scan."""
        self._limit_s = time_limit_s
        self._deadline = time.perf_counter() + time_limit_s
        self._scans = scan_offsets

    def read(self, size: int | None = -1) -> bytes:
        if self._deadline is not None and time.perf_counter() > self._deadline:
            raise StageError(
                "decode_budget",
                f"decoding took longer than the limit of {self._limit_s:g} s per photo; stopped",
            )
        if self._scans and size is not None and size > 0:
            here = self.tell()
            following = bisect.bisect_right(self._scans, here)
            if following < len(self._scans):
                size = min(size, self._scans[following] - here)
        return super().read(size)
