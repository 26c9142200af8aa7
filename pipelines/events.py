"""Sequences: group a deployment's photos into events and label each event, DeepFaune's way.

A camera trap fires bursts; ecologists count events, not frames. Photos of one deployment,
sorted by time, belong to one event while consecutive frames are at most `gap_seconds` apart.
The event label follows DeepFaune: mean logits over the frames that show an animal, divided by
a temperature (1.04, or 1.10 for a single frame), softmax, `undefined` below the threshold; an
event with no detection is blank; one with people or vehicles only is human if it has at least
as many frames with a person as with a vehicle, else vehicle.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from trapline.pipelines.classify import UNDEFINED, softmax
from trapline.pipelines.types import Detection


@dataclass(frozen=True)
class SequenceOptions:
    gap_seconds: float = 10.0  # consecutive frames at most this far apart are one event
    threshold: float = 0.8  # event label below this probability -> "undefined"
    temperature: float = 1.04  # DeepFaune's temperature for events of several frames
    single_frame_temperature: float = 1.10  # and for a single frame


@dataclass(slots=True)
class SequenceItem:
    media_id: str
    deployment_id: str
    timestamp: datetime | None  # tz-aware UTC; None = cannot be placed in a sequence
    detections: list[Detection]


@dataclass(slots=True)
class Event:
    event_id: str
    deployment_id: str
    start: datetime | None
    end: datetime | None
    media_ids: list[str]
    observation_type: str  # animal | human | vehicle | blank
    label: str | None = None  # species, "undefined", or None when not an animal event
    probability: float | None = None
    classified_frames: int = 0  # frames whose logits went into the vote
    extra: dict = field(default_factory=dict)
    probabilities: np.ndarray | None = None  # the vote over all classes, for roll-up/geofence
    vote_label: str | None = None  # the vote's own answer, before post-processing
    label_source: str | None = None  # sequence | rollup | geofence (pipelines/postprocess)
    rule: str | None = None  # the roll-up or geofence rule that changed `label`, if any
    scientific_name: str | None = None  # of the final `label`; None: look `label` up
    taxon_rank: str | None = None


def media_observation_type(detections: list[Detection]) -> str:
    """Camtrap DP observationType of one photo from its kept detections."""
    categories = {d.category for d in detections}
    if "animal" in categories:
        return "animal"
    if "person" in categories:
        return "human"
    if "vehicle" in categories:
        return "vehicle"
    return "blank"


@dataclass(frozen=True, slots=True)
class HeldPhoto:
    """A processed photo waiting in a stream batch: where it sits in the partition and in time."""

    offset: int  # of its upload message in the Kafka partition
    deployment_id: str
    timestamp: datetime | None  # UTC capture time; None = an event of its own
    arrived: float  # when the worker polled it (worker clock, seconds)


def batch_end(
    photos: list[HeldPhoto], last_offset: int, gap_seconds: float, hold_s: float, now: float
) -> int:
    """The last offset a stream batch may end at so that no burst is cut in two.

    A burst (photos of one deployment at most `gap_seconds` apart) is one event with one id only
    if all its photos are written together. So the batch ends before every deployment's last
    burst that got a photo within `hold_s` (it may still grow), and never inside any burst's
    span of offsets: with deployments interleaved in a partition, a burst of one camera may
    span offsets that another camera's open burst has not reached. `last_offset` is the
    batch's last record (records without photos, e.g. refused events, take no part); the
    result is below the first offset when nothing can be written yet.
    """
    if hold_s <= 0 or not photos:
        return last_offset
    items = [SequenceItem(str(i), p.deployment_id, p.timestamp, []) for i, p in enumerate(photos)]
    spans: list[tuple[int, int]] = []  # (first, last) offset of each burst
    end = last_offset
    latest: dict[str, datetime] = {}  # each deployment's newest capture time in the batch
    for p in photos:
        if p.timestamp is not None and (
            p.deployment_id not in latest or p.timestamp > latest[p.deployment_id]
        ):
            latest[p.deployment_id] = p.timestamp
    for group in group_sequences(items, gap_seconds):
        members = [photos[int(item.media_id)] for item in group]
        first, last = min(p.offset for p in members), max(p.offset for p in members)
        spans.append((first, last))
        newest = max(p.arrived for p in members)
        is_tail = (
            group[-1].timestamp is not None
            and group[-1].timestamp == latest[group[-1].deployment_id]
        )
        if is_tail and now - newest < hold_s:
            end = min(end, first - 1)  # still open: hold the whole burst
    moved = True
    while moved:  # step back out of any burst the end falls inside
        moved = False
        for first, last in spans:
            if first <= end < last:
                end, moved = first - 1, True
    return end


def last_sequences(items: list[SequenceItem], gap_seconds: float) -> list[SequenceItem]:
    """Each deployment's last event so far: the photos that a later photo could still join.

    A folder run keeps them out of an intermediate commit (services/run/folder.py): a later photo
    may still join them.
    """
    by_deployment: dict[str, list[SequenceItem]] = defaultdict(list)
    for item in items:
        if item.timestamp is not None:
            by_deployment[item.deployment_id].append(item)
    tails: list[SequenceItem] = []
    for deployment_items in by_deployment.values():
        deployment_items.sort(key=lambda item: (item.timestamp, item.media_id))
        start = len(deployment_items) - 1
        while (
            start > 0
            and (
                deployment_items[start].timestamp - deployment_items[start - 1].timestamp  # type: ignore[operator]
            ).total_seconds()
            <= gap_seconds
        ):
            start -= 1
        tails.extend(deployment_items[start:])
    return tails


def group_sequences(items: list[SequenceItem], gap_seconds: float) -> list[list[SequenceItem]]:
    """Split each deployment's time-sorted photos where the gap exceeds `gap_seconds`.

    Photos without a timestamp form an event each: guessing their place would be worse.
    """
    by_deployment: dict[str, list[SequenceItem]] = defaultdict(list)
    groups: list[list[SequenceItem]] = []
    for item in items:
        if item.timestamp is None:
            groups.append([item])
        else:
            by_deployment[item.deployment_id].append(item)
    for deployment_items in by_deployment.values():
        deployment_items.sort(key=lambda item: (item.timestamp, item.media_id))
        current = [deployment_items[0]]
        for previous, item in zip(deployment_items, deployment_items[1:]):
            if (item.timestamp - previous.timestamp).total_seconds() > gap_seconds:  # type: ignore[operator]
                groups.append(current)
                current = []
            current.append(item)
        groups.append(current)
    return groups


def event_id_for(group: list[SequenceItem]) -> str:
    """Stable across re-runs: depends only on the deployment and the event's first photo."""
    first = group[0]
    when = first.timestamp.isoformat() if first.timestamp else "untimed"
    key = f"{first.deployment_id}|{when}|{first.media_id}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def label_event(
    group: list[SequenceItem], labels: tuple[str, ...], options: SequenceOptions
) -> Event:
    frame_logits = []
    animal_frames = person_frames = vehicle_frames = 0
    for item in group:
        animals = [d for d in item.detections if d.category == "animal"]
        animal_frames += bool(animals)
        person_frames += any(d.category == "person" for d in item.detections)
        vehicle_frames += any(d.category == "vehicle" for d in item.detections)
        classified = [d for d in animals if d.logits is not None]
        if classified:  # DeepFaune votes with each frame's most confident animal box
            frame_logits.append(max(classified, key=lambda d: d.confidence).logits)
    timestamps = [item.timestamp for item in group if item.timestamp is not None]
    event = Event(
        event_id=event_id_for(group),
        deployment_id=group[0].deployment_id,
        start=min(timestamps) if timestamps else None,
        end=max(timestamps) if timestamps else None,
        media_ids=[item.media_id for item in group],
        observation_type="blank",
    )
    if animal_frames:
        event.observation_type = "animal"
        if frame_logits:
            temperature = (
                options.temperature if len(frame_logits) > 1 else options.single_frame_temperature
            )
            probabilities = softmax(np.mean(frame_logits, axis=0), temperature)
            best = int(probabilities.argmax())
            event.probability = round(float(probabilities[best]), 4)
            event.label = labels[best] if event.probability >= options.threshold else UNDEFINED
            event.classified_frames = len(frame_logits)
            event.probabilities = probabilities
            event.vote_label, event.label_source = event.label, "sequence"
    elif person_frames or vehicle_frames:
        event.observation_type = "human" if person_frames >= vehicle_frames else "vehicle"
    return event


def build_events(
    items: list[SequenceItem], labels: tuple[str, ...], options: SequenceOptions
) -> list[Event]:
    return [
        label_event(group, labels, options) for group in group_sequences(items, options.gap_seconds)
    ]
