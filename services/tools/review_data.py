"""What the review screen reads and writes: a paged index of events, one event's photos and
boxes, photo bytes (people blurred), and reviews saved to the reviews table.

Why an index and not the tables: a season holds hundreds of thousands of events. The store keeps
only a few columns per event in memory (id, camera, start, label, probability, counts: ~100
bytes each) and filters and pages them with numpy, so a page of 50 costs the same at 5,000 or
500,000 events. An event's photos and boxes are read when it is opened, through the Delta log
with partition pruning (its deployment and dates), and the last few hundred are cached.
A run or another reviewer writing meanwhile is picked up: the tables' versions are checked at
most every `refresh_s` seconds. The screen itself: services/tools/review.py, docs/review.md.

Over 400 lines because the review index, the photo bytes with people blurred and the saving of
reviews share one store and its locking.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trapline.pipelines import delta
from trapline.pipelines.readers import read_table
from trapline.pipelines.reviews import (
    append_reviews,
    label_names,
    latest_reviews,
    resolve_label,
)
from trapline.pipelines.tables import TABLES
from trapline.services.tools.review_photos import (
    PHOTO_CACHE,
    NotServable,
    TooLarge,
    blurred_preview,
    served_type,
)
from trapline.services.tools.sort import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

NOT_ANIMAL_LABEL = {"human": "person", "blank": "blank", "vehicle": "vehicle"}
MAX_PAGE = 200


class NotFound(LookupError):
    """No such event (or photo) among the ones this store may show."""


class Hidden(PermissionError):
    """A photo this reviewer may not see (people, and no way to blur it)."""


@dataclass(frozen=True)
class ReviewFilter:
    """Which events the reviewer walks through; None means any."""

    deployment: str | None = None  # one deployment id
    label: str | None = None  # the current label: the latest review's, else the machine's
    min_confidence: float | None = None  # the machine's probability of its label, 0-1
    max_confidence: float | None = None  # (events without one are left out when either is set)
    unreviewed: bool = False  # only events nobody reviewed yet


@dataclass
class _Index:
    """One array per column, one element per event, in review order (camera, start time)."""

    event_id: np.ndarray
    deployment_id: np.ndarray
    start: list[datetime | None]
    end: list[datetime | None]
    dates: list[tuple[date | None, date | None]]
    media_count: np.ndarray
    observation_type: np.ndarray
    machine_label: np.ndarray
    probability: np.ndarray  # nan when none
    animals: np.ndarray  # most animal boxes in one photo: the count to suggest
    people: np.ndarray  # photos with a person
    label: np.ndarray  # current label (review wins)
    reviewed: np.ndarray  # bool
    position: dict[str, int]
    reviews: dict[str, dict[str, Any]]  # event id -> its latest event review
    datasets: dict[str, Any]  # table -> pyarrow dataset of the version read
    versions: tuple[int | None, ...]  # events, media, observations, reviews


class ReviewStore:
    """The review screen's data for one results root (and optionally some deployments only)."""

    def __init__(
        self,
        root: str,
        reviewer: str | None = None,
        *,
        show_people: bool = False,
        deployment_ids: Sequence[str] | None = None,
        refresh_s: float = 30.0,
        storage_options: dict[str, Any] | None = None,
    ):
        self.root = root
        self.reviewer = reviewer
        self.show_people = show_people
        self.deployment_ids = list(deployment_ids) if deployment_ids is not None else None
        self.refresh_s = refresh_s
        self.storage_options = storage_options or {}
        self._lock = threading.RLock()
        self._details: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._photos = PHOTO_CACHE  # keyed by root, event, photo and what is blurred
        self.decodes = 0  # photos decoded to be blurred (tests: a cached one is not again)
        self.last_decoded_size: tuple[int, int] | None = None  # what the reduced decode made
        self._refreshing = False
        self._index = self._load()
        self._checked = time.monotonic()

    # -- loading -----------------------------------------------------------------------------

    def _table_versions(self) -> tuple[int | None, ...]:
        versions = []
        for name in ("events", "media", "observations", "reviews"):
            table = delta.open_table(self.root, name)
            versions.append(None if table is None else table.version())
        return tuple(versions)

    def _scope(self) -> pc.Expression | None:
        if self.deployment_ids is None:
            return None
        return pc.field("deployment_id").isin(pa.array(self.deployment_ids, pa.string()))

    def _read(
        self,
        name: str,
        columns: list[str],
        where: pc.Expression | None,
        datasets: dict[str, Any],
    ) -> pa.Table:
        """Rows of a result table through its Delta log, like `read_table`, but on a dataset
        built once per table version: building one costs milliseconds per data file (delta-rs
        turns every file's statistics into an expression), filtering a built one a few ms."""
        if name not in datasets:
            table = delta.open_table(self.root, name)
            datasets[name] = None if table is None else table.to_pyarrow_dataset()
        if datasets[name] is None:
            return read_table(self.root, name, columns=columns)  # nobody wrote it: empty
        schema = pa.schema([TABLES[name].field(c) for c in columns])
        found = datasets[name].to_table(columns=columns, filter=where)
        return found.select(columns).cast(schema)

    def _load(self) -> _Index:
        """Read the index columns of events and media, and the latest reviews (a new index:
        the one in use keeps serving meanwhile)."""
        versions = self._table_versions()
        datasets: dict[str, Any] = {}
        self._read("observations", ["observation_id"], pc.field("observation_id") == "", datasets)
        events = self._read(
            "events",
            ["event_id", "deployment_id", "start", "end", "media_count", "observation_type",
             "label", "probability"],
            self._scope(), datasets,
        )  # fmt: skip
        media = self._read(
            "media", ["event_id", "animal_count", "person_count"], self._scope(), datasets
        )
        per_event = media.group_by("event_id").aggregate([("animal_count", "max")])
        people = (
            media.filter(pc.greater(media["person_count"], 0))
            .group_by("event_id")
            .aggregate([("person_count", "count")])
        )
        animals = dict(
            zip(per_event["event_id"].to_pylist(), per_event["animal_count_max"].to_pylist())
        )
        with_people = dict(
            zip(people["event_id"].to_pylist(), people["person_count_count"].to_pylist())
        )
        order = pc.sort_indices(
            events,
            sort_keys=[
                ("deployment_id", "ascending"),
                ("start", "ascending"),
                ("event_id", "ascending"),
            ],
        )  # nulls (events without a time) last: the default
        events = events.take(order)
        ids = np.asarray(events["event_id"].to_pylist(), dtype=object)
        kinds = events["observation_type"].to_pylist()
        labels = events["label"].to_pylist()
        machine = np.asarray(
            [(lab or "undefined") if kind == "animal" else NOT_ANIMAL_LABEL.get(kind, kind)
             for kind, lab in zip(kinds, labels)],
            dtype=object,
        )  # fmt: skip
        probability = np.asarray(
            [np.nan if p is None or k != "animal" else p
             for p, k in zip(events["probability"].to_pylist(), kinds)],
            dtype=np.float64,
        )  # fmt: skip
        starts, ends = events["start"].to_pylist(), events["end"].to_pylist()
        index = _Index(
            event_id=ids,
            deployment_id=np.asarray(events["deployment_id"].to_pylist(), dtype=object),
            start=starts,
            end=ends,
            dates=[(_day(s), _day(e)) for s, e in zip(starts, ends)],
            media_count=np.asarray(events["media_count"].to_pylist(), dtype=np.int64),
            observation_type=np.asarray(kinds, dtype=object),
            machine_label=machine,
            probability=probability,
            animals=np.asarray([animals.get(e) or 0 for e in ids], dtype=np.int64),
            people=np.asarray([with_people.get(e) or 0 for e in ids], dtype=np.int64),
            label=machine.copy(),
            reviewed=np.zeros(len(ids), dtype=bool),
            position={e: i for i, e in enumerate(ids)},
            reviews={},
            datasets=datasets,
            versions=versions,
        )
        latest = latest_reviews(self.root, self.deployment_ids)
        latest = latest.filter(pc.equal(latest["target"], "event"))
        for row in latest.to_pylist():
            _apply(index, row)
        return index

    def refresh(self, force: bool = False) -> None:
        """Pick up what a run or another reviewer wrote: at most every `refresh_s` seconds the
        tables' versions are compared, and on a change a new index is built in the background
        (seconds for a large season) while the current one keeps serving. `force` rebuilds now."""
        if force:
            self._swap(self._load())
            return
        with self._lock:
            if self._refreshing or time.monotonic() - self._checked < self.refresh_s:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh_now, daemon=True, name="review-refresh").start()

    def _refresh_now(self) -> None:
        try:
            if self._table_versions() != self._index.versions:
                self._swap(self._load())
        except Exception:  # noqa: BLE001 - a failed refresh keeps the index in use; retried later
            log.exception("review: re-reading %s failed; keeping the index in use", self.root)
        finally:
            with self._lock:
                self._checked = time.monotonic()
                self._refreshing = False

    def _swap(self, index: _Index) -> None:
        with self._lock:
            # Reviews saved here while the new index was read are in the new one if committed
            # before its read, and re-applied here otherwise (same review, same result).
            for review in self._index.reviews.values():
                known = index.reviews.get(review["event_id"])
                if known is None or known["reviewed_at"] < review["reviewed_at"]:
                    _apply(index, review)
            self._index = index
            self._details.clear()
            self._checked = time.monotonic()

    # -- reading -----------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        self.refresh()
        index = self._index
        deployments = sorted(set(index.deployment_id.tolist()))
        labels = sorted(set(index.label.tolist()) | set(index.machine_label.tolist()))
        return {
            "root": self.root,
            "reviewer": self.reviewer,
            "show_people": self.show_people,
            "deployments": deployments,
            "labels": labels,
            "names": [asdict(n) for n in label_names()],
            "total": int(len(index.event_id)),
            "reviewed": int(index.reviewed.sum()),
        }

    @staticmethod
    def _mask(index: _Index, f: ReviewFilter) -> np.ndarray:
        mask = np.ones(len(index.event_id), dtype=bool)
        if f.deployment:
            mask &= index.deployment_id == f.deployment
        if f.label:
            mask &= index.label == f.label
        if f.min_confidence is not None:
            mask &= index.probability >= f.min_confidence  # nan compares False: left out
        if f.max_confidence is not None:
            mask &= index.probability <= f.max_confidence
        if f.unreviewed:
            mask &= ~index.reviewed
        return mask

    def page(self, f: ReviewFilter, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Events `offset`..`offset+limit` of those `f` selects, and the progress."""
        self.refresh()
        with self._lock:
            index = self._index
            mask = self._mask(index, f)
            positions = np.flatnonzero(mask)
            offset = max(0, int(offset))
            chosen = positions[offset : offset + max(1, min(int(limit), MAX_PAGE))]
            return {
                "total": int(len(positions)),
                "offset": offset,
                "events": [self._summary(index, int(i)) for i in chosen],
                "progress": {
                    "reviewed": int(index.reviewed.sum()),
                    "total": int(len(index.event_id)),
                    "reviewed_in_filter": int((mask & index.reviewed).sum()),
                },
            }

    @staticmethod
    def _summary(index: _Index, at: int) -> dict[str, Any]:
        event_id = str(index.event_id[at])
        review = index.reviews.get(event_id)
        probability = index.probability[at]
        return {
            "event_id": event_id,
            "deployment_id": index.deployment_id[at],
            "start": _iso(index.start[at]),
            "end": _iso(index.end[at]),
            "media_count": int(index.media_count[at]),
            "observation_type": index.observation_type[at],
            "machine_label": index.machine_label[at],
            "probability": None if np.isnan(probability) else round(float(probability), 4),
            "suggested_count": int(index.animals[at]),
            "people": int(index.people[at]),
            "label": index.label[at],
            "reviewed": bool(index.reviewed[at]),
            "review": _review_json(review) if review else None,
        }

    def event(self, event_id: str) -> dict[str, Any]:
        """An event with its photos (in time order) and their boxes."""
        summary, photos = self._detail(event_id)
        person = (summary["review"] or {}).get("observation_type") == "human"
        public = []
        for photo in photos:
            blurred, hidden, _ = self._privacy(photo, person)
            shown = {k: v for k, v in photo.items() if k not in ("uri", "person_boxes")}
            public.append({**shown, "blurred": blurred, "hidden": hidden})
        return {**summary, "photos": public}

    def _detail(self, event_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The event's summary and its photos with their paths and person boxes (cached)."""
        with self._lock:
            index = self._index
            at = index.position.get(event_id)
            if at is None:
                raise NotFound(f"no event {event_id!r} in {self.root}")
            summary = self._summary(index, at)
            cached = self._details.get(event_id)
        if cached is None:
            cached = self._read_event(index, at)
            with self._lock:
                self._details[event_id] = cached
                while len(self._details) > 512:
                    self._details.popitem(last=False)
        return summary, cached["photos"]

    def _privacy(
        self, photo: dict[str, Any], reviewed_person: bool
    ) -> tuple[bool, bool, list[tuple[float, ...]]]:
        """(blurred, hidden, boxes to blur) for a reviewer who may not see people: the person
        boxes, or the whole photo when a reviewer said the event shows a person that the
        detector missed. A video cannot be blurred here: hidden."""
        if self.show_people:
            return False, False, []
        boxes = photo["person_boxes"] or ([(0.0, 0.0, 1.0, 1.0)] if reviewed_person else [])
        return bool(boxes), bool(boxes) and photo["video"], boxes

    @staticmethod
    def _event_filter(index: _Index, at: int) -> pc.Expression:
        where = (pc.field("deployment_id") == index.deployment_id[at]) & (
            pc.field("event_id") == index.event_id[at]
        )
        first, last = index.dates[at]
        if first is None:
            return where & pc.field("date").is_null()
        return where & (pc.field("date") >= first) & (pc.field("date") <= (last or first))

    def _read_event(self, index: _Index, at: int) -> dict[str, Any]:
        where = self._event_filter(index, at)
        media = self._read(
            "media",
            columns=["media_id", "uri", "timestamp", "width", "height", "observation_type",
                     "person_count", "animal_count"],
            where=where,
            datasets=index.datasets,
        ).to_pylist()  # fmt: skip
        boxes = self._read(
            "observations",
            columns=["observation_id", "media_id", "category", "detection_conf", "bbox_x",
                     "bbox_y", "bbox_width", "bbox_height", "label", "label_probability",
                     "is_static", "frame_number"],
            where=where,
            datasets=index.datasets,
        ).to_pylist()  # fmt: skip
        by_media: dict[str, list[dict[str, Any]]] = {}
        for box in boxes:
            by_media.setdefault(box["media_id"], []).append(box)
        photos = []
        media.sort(key=lambda m: (m["timestamp"] is None, m["timestamp"] or 0, m["uri"]))
        for m in media:
            found = sorted(by_media.get(m["media_id"], []), key=lambda b: b["observation_id"])
            is_video = m["uri"].lower().endswith(VIDEO_EXTENSIONS)
            people = [b for b in found if b["category"] == "person"]
            photos.append({
                "media_id": m["media_id"], "uri": m["uri"],
                "name": m["uri"].rstrip("/").rsplit("/", 1)[-1],
                "timestamp": _iso(m["timestamp"]), "width": m["width"], "height": m["height"],
                "observation_type": m["observation_type"], "video": is_video,
                "person_boxes": [(b["bbox_x"], b["bbox_y"], b["bbox_width"], b["bbox_height"]) for b in people],
                "boxes": [
                    {"observation_id": b["observation_id"], "category": b["category"],
                     "confidence": round(b["detection_conf"], 3),
                     "x": b["bbox_x"], "y": b["bbox_y"], "w": b["bbox_width"], "h": b["bbox_height"],
                     "label": b["label"],
                     "probability": None if b["label_probability"] is None else round(b["label_probability"], 3),
                     "static": b["is_static"]}
                    for b in found
                ],
            })  # fmt: skip
        return {"photos": photos}

    def photo(self, event_id: str, media_id: str) -> tuple[bytes, str]:
        """The photo's bytes and media type (by its bytes, never its name); people blurred
        unless this reviewer may see them. `NotServable` for bytes that are not a photo or
        video, `Hidden` for a video with people or a photo too large to blur here."""
        summary, photos = self._detail(event_id)
        found = next((p for p in photos if p["media_id"] == media_id), None)
        if found is None:
            raise NotFound(f"no photo {media_id!r} in event {event_id!r}")
        person = (summary["review"] or {}).get("observation_type") == "human"
        blurred, hidden, boxes = self._privacy(found, person)
        key = (self.root, event_id, media_id, tuple(boxes))
        hit = self._photos.get(key)
        if hit is not None:
            return hit
        if hidden:
            raise Hidden(
                f"{found['name']}: a video with people cannot be blurred; "
                "start the review with --show-people to see it"
            )
        fs, path = fsspec.core.url_to_fs(found["uri"], **self.storage_options)
        data = fs.cat_file(path)
        if not blurred:
            kind = served_type(data, found["name"])
        else:
            try:
                data, decoded = blurred_preview(data, boxes, found["name"])
            except TooLarge as error:
                raise Hidden(str(error)) from None
            except NotServable:
                raise
            except (OSError, SyntaxError, ValueError) as error:  # Pillow's "cannot decode"
                raise NotServable(f"{found['name']}: not a readable photo ({error})") from None
            kind = "image/jpeg"
            with self._lock:
                self.decodes += 1
                self.last_decoded_size = decoded
        self._photos.put(key, data, kind)
        return data, kind

    # -- writing -----------------------------------------------------------------------------

    def save(
        self,
        event_id: str,
        label: str,
        *,
        count: int | None = None,
        comment: str | None = None,
        reviewer: str | None = None,
    ) -> dict[str, Any]:
        """Record a review of an event; returns the event's summary and the progress."""
        reviewer = reviewer or self.reviewer
        if not reviewer:
            raise ValueError("no reviewer name: start with --reviewer NAME")
        resolve_label(label)  # refuse an empty label before anything is written
        with self._lock:
            at = self._index.position.get(event_id)
            if at is None:
                raise NotFound(f"no event {event_id!r} in {self.root}")
            index = self._index
            probability = index.probability[at]
            row = {
                "target": "event", "event_id": event_id,
                "deployment_id": index.deployment_id[at],
                "label": label, "count": count, "comment": comment,
                "machine_label": index.machine_label[at],
                "machine_probability": None if np.isnan(probability) else float(probability),
                "reviewed_at": datetime.now(timezone.utc),
            }  # fmt: skip
        review_ids = append_reviews(self.root, [row], reviewer)
        with self._lock:
            saved = {**row, "review_id": review_ids[0], "reviewer": reviewer,
                     **asdict(resolve_label(label))}  # fmt: skip
            saved["count"] = 0 if count is None and saved["observation_type"] == "blank" else count
            saved["accepted"] = saved["label"] == row["machine_label"]
            index = self._index  # (a refresh may have swapped it meanwhile)
            _apply(index, saved)
            # Our own commit moved the reviews table one version on: no need to reload the index
            # for it. Anyone else's commit in between: the next refresh reloads.
            reviews = delta.open_table(self.root, "reviews")
            before = index.versions[3]
            if reviews is not None and reviews.version() == (0 if before is None else before) + 1:
                index.versions = (*index.versions[:3], reviews.version())
            return {
                "event": self._summary(index, index.position[event_id]),
                "review_id": review_ids[0],
                "progress": {
                    "reviewed": int(self._index.reviewed.sum()),
                    "total": int(len(self._index.event_id)),
                },
            }


def _apply(index: _Index, review: dict[str, Any]) -> None:
    """Make `review` the event's current label in `index`."""
    at = index.position.get(review["event_id"])
    if at is None:
        return  # a review of an event not (or no longer) in the tables
    index.reviews[review["event_id"]] = review
    index.label[at] = review["label"]
    index.reviewed[at] = True


def _review_json(review: dict[str, Any]) -> dict[str, Any]:
    keys = ("review_id", "reviewer", "reviewed_at", "label", "scientific_name", "count",
            "comment", "accepted", "observation_type")  # fmt: skip
    out = {k: review.get(k) for k in keys}
    out["reviewed_at"] = _iso(out["reviewed_at"])
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _day(value: datetime | None) -> date | None:
    return value.astimezone(timezone.utc).date() if value is not None else None
