"""Video decode stage: a camera-trap clip -> a few upright frames at reduced scale.

Many traps record short clips (.mp4, .avi, .mov) instead of, or after, a burst of photos. A clip
is one media row; its frames are sampled at `video_fps` (1 per second by default), scaled so the
long side is the decode target (as photos are), and each goes through the detector and the
classifier like a photo; the detections come back to the one media row with the frame number
each was seen in (MegaDetector 1.6's `frame_number`).

Memory and time are bounded before any frame is decoded: a clip longer than
`video_max_duration_s` or larger than `max_image_pixels` per frame is refused (a failures row
that says which limit), and a long clip is sampled more sparsely so it never yields more than
`video_max_frames` frames: the whole clip is looked at, never silently only its start.

Decoding uses PyAV (FFmpeg's libraries in a PyPI wheel). Its quirks we rely on:
- `frame.time` is the presentation time in seconds (None when the stream has no timestamps;
  then the frame index / average rate is used);
- `stream.duration` is in `stream.time_base` units and may be None (some AVI files), where the
  container's `duration` (microseconds) is used instead;
- `frame.reformat(width, height, format="rgb24")` scales in FFmpeg (swscale) before the frame
  becomes a PIL image, so a 4K frame never exists as a full-size RGB array in Python.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from PIL import Image

from trapline.pipelines.types import StageError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov"})


def is_video(uri: str) -> bool:
    """Videos are told by extension, as photos are in the source listing."""
    return any(uri.lower().endswith(ext) for ext in VIDEO_EXTENSIONS)


@dataclass(slots=True)
class DecodedVideo:
    frames: list[tuple[int, Image.Image]]  # (0-based frame index in the file, RGB frame)
    width: int  # full-resolution frame width
    height: int
    frame_rate: float  # the file's average frame rate, frames/s
    duration_s: float
    created: datetime | None  # container `creation_time` (UTC), the camera's clock if it set it


def decode_video(
    data: bytes,
    *,
    sample_fps: float,
    max_frames: int,
    max_duration_s: float,
    min_long_side: int,
    max_pixels: int,
) -> DecodedVideo:
    """Sample frames of a clip; every refusal is a `StageError` that names the limit."""
    import av  # imported here: photo-only workers never load FFmpeg

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as error:
        raise StageError("not_a_video", f"cannot open as a video: {error}") from None
    with container:
        if not container.streams.video:
            raise StageError("not_a_video", "the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise StageError("corrupt", "the video stream declares no frame size")
        if width * height > max_pixels:
            raise StageError(
                "too_large",
                f"video frames of {width}x{height} exceed {max_pixels:,} pixels (settings.max_image_pixels)",
            )
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        duration = _duration(stream, container)
        if duration > max_duration_s:
            raise StageError(
                "too_long",
                f"video is {duration:.0f} s long, over {max_duration_s:.0f} s (settings.video_max_duration_s); "
                "split it or raise the limit",
            )
        # Sample at `sample_fps`, sparser if the clip is long, so at most `max_frames` frames.
        step = 1.0 / min(sample_fps, max_frames / duration) if duration > 0 else 1.0 / sample_fps
        scale = min(1.0, min_long_side / max(width, height))
        size = (max(2, round(width * scale)), max(2, round(height * scale)))
        created = _created(container)
        stream.thread_type = "AUTO"
        frames: list[tuple[int, Image.Image]] = []
        next_time = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                when = frame.time if frame.time is not None else index / rate
                if when + 1e-6 < next_time:
                    continue
                image = frame.reformat(width=size[0], height=size[1], format="rgb24").to_image()
                frames.append((index, image))
                while next_time <= when + 1e-6:  # on a fixed grid: no drift from the frame rate
                    next_time += step
                if len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as error:
            if not frames:
                raise StageError("corrupt", f"video decode failed: {error}") from None
            # A truncated tail (a card pulled mid-write) keeps the frames before it.
        if not frames:
            raise StageError("corrupt", "the video has no decodable frame")
    return DecodedVideo(frames, width, height, rate, duration, created)


def _duration(stream, container) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * Fraction(stream.time_base))
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


def _created(container) -> datetime | None:
    """`creation_time` from the container metadata (ISO 8601 UTC, as FFmpeg writes it)."""
    text = (container.metadata or {}).get("creation_time")
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
