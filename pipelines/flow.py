"""The route from media reference to result rows, in one place.

    read -> decode (+EXIF) -> letterbox + detect + NMS -> square crops + classify -> results
    ... all batches done ...
    dedupe -> timestamps -> static boxes -> sequences + event votes
    -> geofence, roll-up, smoothing -> media / observations / events / failures

`PhotoPipeline.process` is what every worker runs on a batch (a Ray actor in folder runs, a
Kafka consumer actor in service mode); `assemble` turns all results into tables. Errors are
values: each stage turns a bad input into a `Failure` and the batch goes on without it. An
outage is not a bad input (`trapline/errors.py`): `process` raises `StorageUnavailable` or
`BackendUnavailable` and the caller retries the whole batch later.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo

import pyarrow as pa

from trapline.errors import OUTAGES, BackendUnavailable, describe, is_retryable
from trapline.models.backend import ClassifierBackend, DetectorBackend
from trapline.pipelines.classify import classify_frames
from trapline.pipelines.decode import FULL_RESOLUTION, decode_image
from trapline.pipelines.deployments import Deployments, cached_deployments
from trapline.pipelines.detect import check_letterbox, detect_frames
from trapline.pipelines.events import Event, SequenceItem, build_events
from trapline.pipelines.fidelity import require_resize
from trapline.pipelines.options import StageOptions
from trapline.pipelines.postprocess import apply_postprocessing, find_static
from trapline.pipelines.source import read_bytes
from trapline.pipelines.tables import (
    ModelNames,
    PlacedMedia,
    events_table,
    failures_table,
    media_table,
    observations_table,
)
from trapline.pipelines.types import (
    Detection,
    Failure,
    Frame,
    MediaRef,
    MediaResult,
    StageError,
)
from trapline.pipelines.video import decode_video, is_video


@dataclass(slots=True)
class BatchOutput:
    results: list[MediaResult]
    failures: list[Failure]
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bytes_read: int = 0


ErrorCounter = Callable[[str, bool], None]  # (stage, retryable): the service's metrics


def _count_nothing(stage: str, retryable: bool) -> None:
    """No metrics: a library user or a test that does not count errors."""


KnownOf = Callable[[str], Container[str]]  # deployment -> media ids and sha256s already written


class PhotoPipeline:
    """decode -> detect -> classify for one batch; holds the model backends."""

    def __init__(
        self,
        options: StageOptions,
        detector: DetectorBackend,
        classifier: ClassifierBackend,
        count_error: ErrorCounter = _count_nothing,
    ):
        self.options = options
        self.detector = detector
        self.classifier = classifier
        self.count_error = count_error  # the metrics are the service's: it passes their counter
        self.decode_long_side = (
            FULL_RESOLUTION
            if options.read.full_resolution
            else max(options.read.decode_min_long_side, detector.spec.input_size)
        )
        check_letterbox(detector, options.detect.letterbox)  # a fixed-size detector: refuse now
        require_resize(options.detect.resize)  # resize: opencv without OpenCV: refuse at start

    @property
    def model_names(self) -> ModelNames:
        """What goes into every row: the models' names and versions, from their specs."""
        d, c = self.detector.spec, self.classifier.spec
        return ModelNames(d.name, d.version, c.name, c.version)

    def process(self, refs: list[MediaRef]) -> BatchOutput:
        out = BatchOutput([], [])
        timer = out.stage_seconds
        frames: list[Frame] = []
        for ref in refs:
            stage = "read"
            try:
                started = time.perf_counter()
                data = read_bytes(ref.uri, self.options.read.max_file_bytes)
                out.bytes_read += len(data)
                stage = "decode"
                decoded_at = time.perf_counter()
                timer["read"] += decoded_at - started
                frames.extend(self._frames(ref, data))
                timer["decode"] += time.perf_counter() - decoded_at
            except StageError as error:
                self.count_error(stage, False)
                out.failures.append(_failure(ref, stage, error.kind, error.message))
                continue
            except OUTAGES:
                self.count_error(stage, True)
                raise  # storage away: the caller retries the batch, the photo is fine
        if not frames:
            return out
        stage = "detect"
        detections: list[list[Detection]] = []
        try:
            # A video adds many frames: detect and classify at most batch_size frames at a time.
            detect, classify = self.options.detect, self.options.classify
            for start in range(0, len(frames), detect.batch_size):
                part = frames[start : start + detect.batch_size]
                stage, started = "detect", time.perf_counter()
                found = detect_frames(
                    part,
                    self.detector,
                    detect.threshold,
                    detect.nms_iou,
                    detect.letterbox,
                    detect.resize,
                )
                stage, classified_at = "classify", time.perf_counter()
                timer["detect"] += classified_at - started
                classify_frames(
                    part,
                    found,
                    self.classifier,
                    classify.threshold,
                    classify.max_crops_per_photo,
                    classify.top_k,
                    classify.crop_rounding,
                )
                timer["classify"] += time.perf_counter() - classified_at
                detections.extend(found)
        except Exception as error:  # noqa: BLE001 - a model failure fails this batch, not the run
            if is_retryable(error):  # an outage, not a bad photo: the caller retries the batch
                self.count_error(stage, True)
                if isinstance(error, OUTAGES):
                    raise
                raise BackendUnavailable(f"{stage}: {describe(error)}") from error
            self.count_error(stage, False)
            message = f"{type(error).__name__}: {error}"
            for ref in {id(f.ref): f.ref for f in frames}.values():  # a video once, not per frame
                out.failures.append(_failure(ref, stage, "model_error", message))
            return out
        by_media: dict[int, MediaResult] = {}  # a video's frames share one ref: one result
        for frame, found in zip(frames, detections):
            for detection in found:
                detection.frame_number = frame.frame_number
            result = by_media.get(id(frame.ref))
            if result is not None:
                result.detections.extend(found)
                continue
            by_media[id(frame.ref)] = result = MediaResult(
                ref=frame.ref,
                media_id=frame.media_id,
                sha256=frame.sha256,
                width=frame.width,
                height=frame.height,
                exif_datetime=frame.exif_datetime,
                camera_make=frame.camera_make,
                camera_model=frame.camera_model,
                byte_size=frame.byte_size,
                detections=list(found),
            )
            out.results.append(result)
        frames.clear()  # the pixels are not needed past this point
        return out

    def _frames(self, ref: MediaRef, data: bytes) -> list[Frame]:
        """A photo's one frame, or a video's sampled frames (pipelines/video.py)."""
        sha256 = hashlib.sha256(data).hexdigest() if is_video(ref.uri) else None
        if sha256 is not None:
            video = decode_video(
                data,
                sample_fps=self.options.video.fps,
                max_frames=self.options.video.max_frames,
                max_duration_s=self.options.video.max_duration_s,
                min_long_side=self.decode_long_side,
                max_pixels=self.options.read.max_image_pixels,
            )
            return [
                Frame(ref, ref.media_id or sha256, sha256, image, video.width, video.height,
                      video.created, None, None, len(data), frame_number=index)
                for index, image in video.frames
            ]  # fmt: skip
        decoded = decode_image(
            data, min_long_side=self.decode_long_side, max_pixels=self.options.read.max_image_pixels
        )
        return [
            Frame(
                ref=ref,
                media_id=ref.media_id or decoded.sha256,
                sha256=decoded.sha256,
                image=decoded.image,
                width=decoded.width,
                height=decoded.height,
                exif_datetime=decoded.exif_datetime,
                camera_make=decoded.camera_make,
                camera_model=decoded.camera_model,
                byte_size=len(data),
            )
        ]


def split_duplicates(
    results: list[MediaResult], known_of: KnownOf | None = None
) -> tuple[list[MediaResult], list[Failure]]:
    """The one deduplication, before anything is written: a photo the tables already hold (same
    media_id or same bytes in its deployment, `known_of`), or a second copy among `results`,
    becomes a `duplicate` failure, so it is accounted for and never counted twice."""
    unique: dict[str, MediaResult] = {}
    by_bytes: dict[str, MediaResult] = {}
    duplicates: list[Failure] = []
    for result in results:
        known = known_of(result.ref.deployment_id) if known_of is not None else ()
        if result.media_id in known or result.sha256 in known:
            reason = f"media_id {result.media_id} (or its bytes) is already in the tables; not written again"
        elif (first := unique.get(result.media_id) or by_bytes.get(result.sha256)) is not None:
            same = (
                "media_id"
                if first.media_id == result.media_id
                else f"bytes (sha256) as media_id {first.media_id}"
            )
            reason = f"same {same}, {first.ref.uri}; kept that one, counted once"
        else:
            unique[result.media_id] = by_bytes[result.sha256] = result
            continue
        duplicates.append(_failure(result.ref, "dedupe", "duplicate", reason))
    return list(unique.values()), duplicates


def _failure(ref: MediaRef, stage: str, kind: str, message: str) -> Failure:
    text = message if ref.uri in message else f"{ref.uri}: {message}"
    return Failure(ref.uri, ref.deployment_id, ref.media_id, stage, kind, text, ref.source)


def resolve_timestamp(
    result: MediaResult, deployments: Deployments, default_tz: tzinfo
) -> tuple[datetime | None, str, str | None]:
    """UTC capture time, where it came from, and what is doubtful about it.

    The event's time beats EXIF; a naive EXIF time is read in the deployment's zone (or the
    default offset). No usable time is flagged (`no_timestamp`), never guessed.
    """
    for when, source in ((result.ref.timestamp, "event"), (result.exif_datetime, "exif")):
        if when is not None:
            placed = deployments.localize(when, result.ref.deployment_id, default_tz)
            return placed.utc, source, placed.issue
    return None, "none", "no_timestamp"


@dataclass(slots=True)
class Tables:
    media: pa.Table
    observations: pa.Table
    events: pa.Table
    failures: pa.Table
    failed: list[Failure]  # the failures table's rows as values, for the dead-letter topic

    def as_dict(self) -> dict[str, pa.Table]:
        return {
            "media": self.media,
            "observations": self.observations,
            "events": self.events,
            "failures": self.failures,
        }


def assemble(
    results: list[MediaResult],
    failures: list[Failure],
    options: StageOptions,
    models: ModelNames,
    labels: tuple[str, ...],
    known_of: KnownOf | None = None,
) -> Tables:
    """Dedupe, place in time, flag static boxes, group into events, post-process, build tables.

    `known_of(deployment)` gives the media ids and sha256s the tables already hold there."""
    unique, duplicates = split_duplicates(results, known_of)
    failures = [*failures, *duplicates]
    deployments = cached_deployments(options.place.deployments_file)
    tz = options.place.tz
    placed = [(result, *resolve_timestamp(result, deployments, tz)) for result in unique]
    post = options.postprocess
    static = find_static(
        [(r.media_id, r.ref.deployment_id, ts, r.detections) for r, ts, *_ in placed], post
    )
    events = build_events(
        [
            SequenceItem(r.media_id, r.ref.deployment_id, ts, static.kept(r.media_id, r.detections))
            for r, ts, *_ in placed
        ],
        labels,
        options.events,
    )
    decisions = apply_postprocessing(
        [r for r, *_ in placed], events, static, deployments, labels, post
    )
    event_of: dict[str, Event] = {m: e for e in events for m in e.media_ids}
    rows = [
        PlacedMedia(r, ts, source, issue, event_of[r.media_id], decisions[r.media_id])
        for r, ts, source, issue in placed
    ]
    processed_at = datetime.now(timezone.utc)
    return Tables(
        media=media_table(rows, models, processed_at),
        observations=observations_table(rows, models),
        events=events_table(events),
        failures=failures_table(failures),
        failed=failures,
    )
