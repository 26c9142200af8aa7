"""The result tables' schemas and the rows that fill them.

Every column carries its meaning in the Arrow field metadata (`description`), so the schema is
documented where it is defined and `docs/tables.md` is generated from it
(`trapline tables-doc`). Field names follow Camtrap DP where it has one, in snake_case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pyarrow as pa

from trapline.models.labels import SCIENTIFIC_NAMES
from trapline.pipelines.events import Event, media_observation_type
from trapline.pipelines.postprocess.decision import Decision
from trapline.pipelines.types import Failure, MediaResult

SCHEMA_VERSION = "3"  # 3: Delta Lake tables, `date` partition column; 2: deployments, post-processing, video frames
UTC_US = pa.timestamp("us", tz="UTC")


def _field(name: str, kind: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable=nullable, metadata={"description": description})


MEDIA = pa.schema([
    _field("media_id", pa.string(), "Stable id: the producer's id, else the SHA-256 of the bytes.", False),
    _field("deployment_id", pa.string(), "Camera deployment (folder below the input root, or the event's).", False),
    _field("uri", pa.string(), "Where the photo was read from (path or fsspec URL).", False),
    _field("timestamp", UTC_US, "Capture time in UTC; null when neither event nor EXIF had one."),
    _field("date", pa.date32(), "Capture date in UTC (partition column); null when `timestamp` is."),
    _field("timestamp_source", pa.string(), "event | exif | none: where `timestamp` came from.", False),
    _field("timestamp_issue", pa.string(), "Why to doubt `timestamp`, null if nothing: no_timestamp, default_offset (naive EXIF, deployment has no zone), dst_ambiguous, dst_gap, outside_deployment (camera clock off?)."),
    _field("sha256", pa.string(), "SHA-256 of the file's bytes, hex.", False),
    _field("width", pa.int32(), "Full-resolution width after EXIF orientation, pixels.", False),
    _field("height", pa.int32(), "Full-resolution height after EXIF orientation, pixels.", False),
    _field("byte_size", pa.int64(), "File size, bytes.", False),
    _field("camera_make", pa.string(), "EXIF Make."),
    _field("camera_model", pa.string(), "EXIF Model."),
    _field("observation_type", pa.string(), "animal | human | vehicle | blank (Camtrap DP observationType) from this photo's detections.", False),
    _field("animal_count", pa.int16(), "Animal detections kept in this photo.", False),
    _field("person_count", pa.int16(), "Person detections kept in this photo.", False),
    _field("vehicle_count", pa.int16(), "Vehicle detections kept in this photo.", False),
    _field("static_count", pa.int16(), "Detections flagged static (repeat detections of scenery), left out of the counts above and of observation_type.", False),
    _field("file_public", pa.bool_(), "False when a person was detected: the photo must not be published (Camtrap DP filePublic).", False),
    _field("event_id", pa.string(), "Sequence (event) this photo belongs to; see the events table.", False),
    _field("event_label", pa.string(), "The event's label (sequence-level vote); null unless an animal event.", True),
    _field("detector", pa.string(), "Detector model name.", False),
    _field("detector_version", pa.string(), "Detector model version.", False),
    _field("classifier", pa.string(), "Classifier model name.", False),
    _field("classifier_version", pa.string(), "Classifier model version.", False),
    _field("processed_at", UTC_US, "When this row was produced, UTC.", False),
    _field("source", pa.string(), "topic/partition/offset of the upload message; null for folder runs."),
])  # fmt: skip

OBSERVATIONS = pa.schema([
    _field("observation_id", pa.string(), "media_id + '-' + index of the detection in the photo, best first.", False),
    _field("media_id", pa.string(), "The photo (media table).", False),
    _field("deployment_id", pa.string(), "Camera deployment.", False),
    _field("event_id", pa.string(), "Sequence (event) of the photo.", False),
    _field("timestamp", UTC_US, "Capture time of the photo, UTC."),
    _field("date", pa.date32(), "Capture date in UTC (partition column); null when `timestamp` is."),
    _field("frame_number", pa.int32(), "Videos: 0-based index in the file of the frame this detection was seen in (MegaDetector 1.6 `frame_number`); a video's detections are in frame order. Null for photos."),
    _field("category", pa.string(), "animal | person | vehicle (MegaDetector category).", False),
    _field("detection_conf", pa.float32(), "Detector score, 0-1 (objectness x class for YOLOv5 models).", False),
    _field("bbox_x", pa.float32(), "Box left edge, relative to photo width (0-1, top-left origin).", False),
    _field("bbox_y", pa.float32(), "Box top edge, relative to photo height.", False),
    _field("bbox_width", pa.float32(), "Box width, relative to photo width.", False),
    _field("bbox_height", pa.float32(), "Box height, relative to photo height.", False),
    _field("label", pa.string(), "Final label of this box after post-processing (docs/postprocessing.md): a classifier label, a higher taxon's scientific name after roll-up or geofencing (e.g. 'Cervidae'), or 'undefined'; null for people, vehicles, unclassified and static boxes."),
    _field("scientific_name", pa.string(), "Scientific name of `label` (Camtrap DP scientificName)."),
    _field("taxon_rank", pa.string(), "Rank of `scientific_name`: species | genus | family | order | class (Camtrap DP taxonRank)."),
    _field("label_source", pa.string(), "Where `label` came from: classifier | image (photo smoothing) | sequence (event vote) | rollup | geofence; null when no label."),
    _field("rule", pa.string(), "The post-processing rule that changed the label, in words (e.g. 'geofence: Rangifer tarandus allowed only in ...'); null if none did."),
    _field("label_probability", pa.float32(), "Probability of `label`: the classifier's, the event vote's, or the summed probability of a rolled-up taxon."),
    _field("classifier_label", pa.string(), "The classifier's own answer for this box before post-processing, 'undefined' below the threshold."),
    _field("classification_probability", pa.float32(), "Softmax probability of the top class, 0-1."),
    _field("top_labels", pa.list_(pa.string()), "Top-k labels, most probable first."),
    _field("top_probabilities", pa.list_(pa.float32()), "Their probabilities."),
    _field("classified_by", pa.string(), "Classifier name/version; null when not classified."),
    _field("is_static", pa.bool_(), "True: a repeat detection at one place across many photos and a long span (scenery); excluded from labels, counts and the event vote. Review with `trapline postprocess-report`.", False),
    _field("static_group", pa.string(), "The static place this box belongs to (same id for all its boxes); null if not static."),
])  # fmt: skip

EVENTS = pa.schema([
    _field("event_id", pa.string(), "Stable id from the deployment and the event's first photo.", False),
    _field("deployment_id", pa.string(), "Camera deployment.", False),
    _field("start", UTC_US, "First photo's capture time, UTC."),
    _field("end", UTC_US, "Last photo's capture time, UTC."),
    _field("date", pa.date32(), "Date of `start` in UTC (partition column); null when `start` is."),
    _field("media_count", pa.int32(), "Photos in the event.", False),
    _field("observation_type", pa.string(), "animal | human | vehicle | blank, by DeepFaune's sequence rules.", False),
    _field("label", pa.string(), "Sequence-level species vote, 'undefined' below the threshold."),
    _field("scientific_name", pa.string(), "Scientific name of `label`."),
    _field("taxon_rank", pa.string(), "Rank of `scientific_name`: species | genus | family | order | class."),
    _field("label_source", pa.string(), "sequence (the vote) | rollup | geofence: what decided `label`."),
    _field("rule", pa.string(), "The roll-up or geofence rule that changed the vote's label, in words; null if none."),
    _field("vote_label", pa.string(), "The vote's own label before roll-up and geofencing."),
    _field("probability", pa.float32(), "Probability of `label`: the voted class after temperature scaling, or the summed probability of a rolled-up taxon."),
    _field("classified_frames", pa.int32(), "Frames whose logits entered the vote.", False),
])  # fmt: skip

FAILURES = pa.schema([
    _field("uri", pa.string(), "The input that failed (path, URL, or topic/partition/offset for bad events).", False),
    _field("deployment_id", pa.string(), "Deployment, when known."),
    _field("media_id", pa.string(), "Media id, when known."),
    _field("stage", pa.string(), "source | read | decode | detect | classify | dedupe | event | write.", False),
    _field("kind", pa.string(), "Short reason: missing, truncated, corrupt, not_an_image, too_large, duplicate, ...", False),
    _field("message", pa.string(), "What is wrong and what to do, for a human.", False),
    _field("failed_at", UTC_US, "When it failed, UTC.", False),
    _field("source", pa.string(), "topic/partition/offset of the upload message, when any."),
    _field("raw_event", pa.binary(), "The original message bytes, for bad events."),
])  # fmt: skip

REVIEWS = pa.schema([
    _field("review_id", pa.string(), "Unique id of this review: commit sequence (12 digits), row in the commit (5 digits), random part; sorts in commit order (the later review of an item wins).", False),
    _field("reviewer", pa.string(), "Who reviewed: the name given to `trapline review --reviewer`, or the API program's user (Camtrap DP classifiedBy).", False),
    _field("reviewed_at", UTC_US, "When the reviewer decided, UTC (Camtrap DP classificationTimestamp).", False),
    _field("target", pa.string(), "event | observation: what was reviewed. An event review speaks for the whole burst.", False),
    _field("event_id", pa.string(), "The event reviewed, or the event of the observation reviewed.", False),
    _field("observation_id", pa.string(), "The observation (box) reviewed; null for an event review."),
    _field("deployment_id", pa.string(), "Camera deployment (partition column).", False),
    _field("machine_label", pa.string(), "The label the review replaces, as the tables had it (event vote, box label, or blank/person/vehicle when no animal); null if none."),
    _field("machine_probability", pa.float32(), "The probability the tables gave `machine_label`; null if none."),
    _field("label", pa.string(), "The reviewer's label: a classifier label ('red deer'), a taxon's scientific name that the classifier lacks ('Vulpes lagopus'), or blank | person | vehicle.", False),
    _field("scientific_name", pa.string(), "Scientific name of `label` (Camtrap DP scientificName); null for blank, person and vehicle."),
    _field("taxon_rank", pa.string(), "Rank of `scientific_name` when the taxonomy knows it: species | genus | family | order | class."),
    _field("observation_type", pa.string(), "animal | human | vehicle | blank (Camtrap DP observationType) that `label` implies.", False),
    _field("count", pa.int32(), "Individuals the reviewer counted (Camtrap DP count); null when not counted, 0 for blank."),
    _field("accepted", pa.bool_(), "True when the reviewer kept the machine's label (accepted it), False when they changed it.", False),
    _field("comment", pa.string(), "The reviewer's free comment (Camtrap DP observationComments); null if none."),
])  # fmt: skip

TABLES: dict[str, pa.Schema] = {
    "media": MEDIA,
    "observations": OBSERVATIONS,
    "events": EVENTS,
    "failures": FAILURES,
    "reviews": REVIEWS,  # people's corrections (pipelines/reviews.py); not written by runs
}


def _date(when: datetime | None) -> date | None:
    """The UTC day of a timestamp: the tables' date partition."""
    return when.astimezone(timezone.utc).date() if when is not None else None


@dataclass(frozen=True, slots=True)
class PlacedMedia:
    """A processed photo placed in time and in its event: what one media row is made from."""

    result: MediaResult
    timestamp: datetime | None  # UTC
    timestamp_source: str  # event | exif | none
    timestamp_issue: str | None
    event: Event
    decisions: list[Decision] | None = None  # one per detection (postprocess); None: raw labels

    def box_decisions(self) -> list[Decision]:
        """The post-processing decisions, or the classifier's raw answers when there are none."""
        if self.decisions is not None:
            return self.decisions
        return [
            Decision(d.label, d.probability, "classifier" if d.label else None,
                     scientific_name=SCIENTIFIC_NAMES.get(d.label or ""))
            for d in self.result.detections
        ]  # fmt: skip


@dataclass(frozen=True)
class ModelNames:
    detector: str
    detector_version: str
    classifier: str
    classifier_version: str


def media_table(
    placed: Iterable[PlacedMedia], models: ModelNames, processed_at: datetime
) -> pa.Table:
    rows = []
    for p in placed:
        result, event = p.result, p.event
        static = [decision.is_static for decision in p.box_decisions()]
        kept = [d for d, is_static in zip(result.detections, static) if not is_static]
        counts = {c: sum(d.category == c for d in kept) for c in ("animal", "person", "vehicle")}
        rows.append({
            "media_id": result.media_id, "deployment_id": result.ref.deployment_id,
            "uri": result.ref.uri, "timestamp": p.timestamp, "date": _date(p.timestamp),
            "timestamp_source": p.timestamp_source,
            "timestamp_issue": p.timestamp_issue,
            "sha256": result.sha256, "width": result.width, "height": result.height,
            "byte_size": result.byte_size, "camera_make": result.camera_make,
            "camera_model": result.camera_model,
            "observation_type": media_observation_type(kept),
            "animal_count": counts["animal"], "person_count": counts["person"],
            "vehicle_count": counts["vehicle"], "static_count": sum(static),
            "file_public": counts["person"] == 0,
            "event_id": event.event_id,
            "event_label": event.label, "detector": models.detector,
            "detector_version": models.detector_version, "classifier": models.classifier,
            "classifier_version": models.classifier_version, "processed_at": processed_at,
            "source": result.ref.source,
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=MEDIA)


def observations_table(placed: Iterable[PlacedMedia], models: ModelNames) -> pa.Table:
    classified_by = f"{models.classifier}/{models.classifier_version}"
    rows = []
    for p in placed:
        result, event, timestamp = p.result, p.event, p.timestamp
        for index, (d, final) in enumerate(zip(result.detections, p.box_decisions())):
            rows.append({
                "observation_id": f"{result.media_id}-{index}", "media_id": result.media_id,
                "deployment_id": result.ref.deployment_id, "event_id": event.event_id,
                "timestamp": timestamp, "date": _date(timestamp), "category": d.category, "detection_conf": d.confidence,
                "frame_number": d.frame_number,
                "bbox_x": d.bbox[0], "bbox_y": d.bbox[1], "bbox_width": d.bbox[2],
                "bbox_height": d.bbox[3], "label": final.label,
                "scientific_name": final.scientific_name, "taxon_rank": final.taxon_rank,
                "label_source": final.source, "rule": final.rule,
                "label_probability": final.probability, "classifier_label": d.label,
                "classification_probability": d.probability,
                "top_labels": d.top_labels or None, "top_probabilities": d.top_probabilities or None,
                "classified_by": classified_by if d.label is not None else None,
                "is_static": final.is_static, "static_group": final.static_group,
            })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=OBSERVATIONS)


def events_table(events: Iterable[Event]) -> pa.Table:
    rows = [
        {
            "event_id": e.event_id,
            "deployment_id": e.deployment_id,
            "start": e.start,
            "end": e.end,
            "date": _date(e.start),
            "media_count": len(e.media_ids),
            "observation_type": e.observation_type,
            "label": e.label,
            "scientific_name": e.scientific_name or SCIENTIFIC_NAMES.get(e.label or ""),
            "taxon_rank": e.taxon_rank,
            "label_source": e.label_source,
            "rule": e.rule,
            "vote_label": e.vote_label,
            "probability": e.probability,
            "classified_frames": e.classified_frames,
        }  # fmt: skip
        for e in events
    ]
    return pa.Table.from_pylist(rows, schema=EVENTS)


def failures_table(failures: Iterable[Failure]) -> pa.Table:
    now = datetime.now(timezone.utc)
    rows = [
        {
            "uri": f.uri,
            "deployment_id": f.deployment_id,
            "media_id": f.media_id,
            "stage": f.stage,
            "kind": f.kind,
            "message": f.message,
            "failed_at": now,
            "source": f.source,
            "raw_event": f.raw_event,
        }  # fmt: skip
        for f in failures
    ]
    return pa.Table.from_pylist(rows, schema=FAILURES)
