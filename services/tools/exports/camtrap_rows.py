"""Rows of the three Camtrap DP 1.0.2 tables (deployments, media, observations) from ours.

Column names and order come from the vendored official table schemas, so a header can never
drift from the standard. Times are written in each deployment's own clock zone with its offset
(`2024-05-03T09:30:00+02:00`), as Camtrap DP asks; classification times in UTC.

What cannot be written is never dropped silently: a photo without a capture time (Camtrap DP
requires `timestamp`, and `eventStart`/`eventEnd` for its observations) is left out and listed
in `Excluded`, and so is an event without a start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from importlib import resources
from typing import Any

from trapline.pipelines.deployments import Deployments
from trapline.services.tools.exports.answers import Answer, english_names, photo_answer, run_root
from trapline.services.tools.exports.camtrap_deployments import deployment_row, local_iso
from trapline.services.tools.exports.common import (
    ExportError,
    Results,
    detection_index,
    media_type,
    relative_to,
    utc_z,
)
from trapline.services.tools.exports.reviewed import Reviews

TABLES = ("deployments", "media", "observations")
OBSERVATION_TYPES = {"animal": "animal", "person": "human", "vehicle": "vehicle"}
COUNT_COLUMN = {"animal": "animal_count", "human": "person_count", "vehicle": "vehicle_count"}
DIGITS = 6  # float32 values written as their meaningful digits, not 0.5367000102996826


def table_schema(name: str) -> dict[str, Any]:
    """The official Camtrap DP 1.0.2 table schema `name`, from the vendored copy."""
    folder = resources.files("trapline.services.tools.exports") / "schemas"
    return json.loads((folder / f"{name}-table-schema.json").read_text(encoding="utf-8"))


def columns(name: str) -> list[str]:
    return [f["name"] for f in table_schema(name)["fields"]]


@dataclass
class Excluded:
    """Rows that Camtrap DP cannot hold, with why (shown by the CLI, kept in the report)."""

    media: list[dict[str, str]] = field(default_factory=list)  # {"uri", "reason"}
    events: list[dict[str, str]] = field(default_factory=list)  # {"event_id", "reason"}


@dataclass
class Taxa:
    """The taxa written: scientific name -> its English name (the classifier's label that
    names it; None for a higher taxon no label names), and -> rank."""

    labels: dict[str, str | None] = field(default_factory=dict)
    ranks: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, english: str | None, rank: str | None = None) -> None:
        if self.labels.get(name) is None:
            self.labels[name] = english
        if rank:
            self.ranks.setdefault(name, rank)


@dataclass
class CamtrapTables:
    deployments: list[dict[str, Any]]
    media: list[dict[str, Any]]
    observations: list[dict[str, Any]]
    excluded: Excluded
    notes: list[str]  # what was filled in for the user to check (deployment periods, ...)
    taxa: Taxa


def build_tables(
    results: Results,
    deployments: Deployments,
    levels: tuple[str, ...] = ("media", "event"),
    media_url: str | None = None,
    base: str | None = None,
    reviews: Reviews | None = None,
) -> CamtrapTables:
    """Map our tables to Camtrap DP's. `levels`: observationLevel rows to write.
    `base`: the folder given to the run (default: found from the photos' paths,
    `answers.run_root`); `filePath` is the photo's path below it, behind `media_url` if given. `reviews`: people's labels, which win over the machine's."""
    excluded, notes, taxa = Excluded(), [], Taxa()
    reviews = reviews or Reviews()
    if base is None:
        base = run_root([*results.media, *results.failures])
    names = english_names([*results.observations, *results.events])
    dated = []
    for row in results.media:
        if row["timestamp"] is None:
            excluded.media.append({"uri": row["uri"], "reason": "no capture time (timestamp)"})
        else:
            dated.append(row)
    used = sorted({row["deployment_id"] for row in dated})
    _require_coordinates(used, deployments)
    zones = {d: deployments[d].tz() or timezone.utc for d in used}

    observations: list[dict[str, Any]] = []
    if "media" in levels:
        observations += _media_level(results, dated, zones, taxa, names, reviews)
    if "event" in levels:
        observations += _event_level(results, dated, zones, taxa, names, reviews, excluded)
    people = _reviewed_people(results, reviews)
    media_rows = [_media_row(row, zones, media_url, base, people) for row in dated]
    deployment_rows = [
        deployment_row(
            deployments[d], [r for r in dated if r["deployment_id"] == d], zones[d], notes
        )
        for d in used
    ]
    return CamtrapTables(deployment_rows, media_rows, observations, excluded, notes, taxa)


def _require_coordinates(used: list[str], deployments: Deployments) -> None:
    missing = [d for d in used if d not in deployments]
    unplaced = [d for d in used if d in deployments and None in (deployments[d].latitude, deployments[d].longitude)]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"not in the deployments file: {', '.join(missing)}")
    if unplaced:
        problems.append(f"no latitude/longitude: {', '.join(unplaced)}")
    if problems:
        raise ExportError(
            f"Camtrap DP requires each deployment's coordinates; deployments {deployments.source}: "
            + "; ".join(problems)
            + " (add deployment_id, latitude, longitude rows to the deployments file, "
            "`--deployments FILE`)"
        )


def _number(value: float | None) -> float | None:
    return None if value is None else round(float(value), DIGITS)


def file_path(uri: str, media_url: str | None, base: str) -> str:
    """The photo's path below the run's folder, behind `media_url` when given.

    Camtrap DP's filePath is "URL or relative path to the media file, respectively for
    externally hosted files or files that are part of the package" (no leading '/', '.',
    '~', no '..'): without a public URL, the path relative to the folder given to the run,
    which is where the photos lie when the package is written into that folder (or the
    folder is copied beside datapackage.json). Never a path of the machine that ran it."""
    relative = relative_to(uri, base) if base else uri
    if relative == uri and ("://" in uri or uri.startswith("/")):
        raise ExportError(
            f"{uri} is not below the run's folder {base or '(none)'}: cannot write a relative "
            "filePath (give --media-url)"
        )
    if media_url:
        return media_url.rstrip("/") + "/" + relative
    return relative


def _reviewed_people(results: Results, reviews: Reviews) -> set[str]:
    """Photos a reviewer says show a person (their box, or their event): not public."""
    events = {e for e, r in reviews.events.items() if r["observation_type"] == "human"}
    boxes = {o for o, r in reviews.boxes.items() if r["observation_type"] == "human"}
    photos = {m["media_id"] for m in results.media if m["event_id"] in events}
    return photos | {o["media_id"] for o in results.observations if o["observation_id"] in boxes}


def _media_row(row: dict[str, Any], zones: dict[str, tzinfo], media_url: str | None, base: str, people: set[str]) -> dict[str, Any]:  # fmt: skip
    issue = row.get("timestamp_issue")
    return {
        "mediaID": row["media_id"],
        "deploymentID": row["deployment_id"],
        "captureMethod": "activityDetection",
        "timestamp": local_iso(row["timestamp"], zones[row["deployment_id"]]),
        "filePath": file_path(row["uri"], media_url, base),
        # False when a person was detected, or a reviewer saw one
        "filePublic": bool(row["file_public"]) and row["media_id"] not in people,
        "fileName": row["uri"].rsplit("/", 1)[-1],
        "fileMediatype": media_type(row["uri"]),
        "mediaComments": f"timestamp issue: {issue}" if issue else None,
    }


def _media_level(results: Results, dated: list[dict[str, Any]], zones: dict[str, tzinfo], taxa: Taxa, names: dict[str, str], reviews: Reviews) -> list[dict[str, Any]]:  # fmt: skip
    """One row per detection, with the photo's own answer (`answers.photo_answer`), not the
    event's vote; a photo without detections gets one `blank` row."""
    by_media = results.observations_by_media()
    rows = []
    for media in dated:
        when = local_iso(media["timestamp"], zones[media["deployment_id"]])
        common = {
            "deploymentID": media["deployment_id"], "mediaID": media["media_id"],
            "eventID": media["event_id"], "eventStart": when, "eventEnd": when,
            "observationLevel": "media", "classificationMethod": "machine",
            "classificationTimestamp": utc_z(media["processed_at"]),
        }  # fmt: skip
        detector = f"{media['detector']}/{media['detector_version']}"
        # Static boxes (scenery seen in many photos, `is_static`) are not observations; the
        # photo's observation_type already leaves them out. They stay in the MegaDetector JSON.
        boxes = by_media.get(media["media_id"], [])
        photo, removed = [], []
        for obs in (o for o in boxes if not o.get("is_static")):
            kind = OBSERVATION_TYPES[obs["category"]]
            answer = photo_answer(obs, boxes)
            name = answer.scientific_name if kind == "animal" else None
            row = {
                **common, "observationID": obs["observation_id"], "observationType": kind,
                "scientificName": name, "count": 1,
                "bboxX": _number(obs["bbox_x"]), "bboxY": _number(obs["bbox_y"]),
                "bboxWidth": _number(obs["bbox_width"]), "bboxHeight": _number(obs["bbox_height"]),
                "classifiedBy": obs["classified_by"] if name else detector,
                # The answer's probability when named, else the detector's score for the type.
                "classificationProbability": _number(answer.probability if name else obs["detection_conf"]),
                "observationTags": _tags(obs, answer),
            }  # fmt: skip
            review = reviews.for_box(obs)
            if review is not None:
                row = _reviewed(
                    row,
                    review,
                    answer.label,
                    answer.probability,
                    box=True,
                    counts=review["target"] == "observation",
                )
                if row is None:  # a reviewer says there is nothing here
                    removed.append(answer.label if name else kind)
                    continue
            if row["scientificName"]:
                taxa.add(row["scientificName"], names.get(row["scientificName"]), _rank(row, answer, review))  # fmt: skip
            photo.append(row)
        review = reviews.events.get(media["event_id"])
        if not photo:
            row = {**common, "observationID": f"{media['media_id']}-blank",
                   "observationType": "blank", "classifiedBy": detector}  # fmt: skip
            if review is not None and review["observation_type"] != "blank":
                # The reviewer saw what the detector missed: the photo shows it, without a box.
                row = {**row, "observationID": f"{media['media_id']}-photo", "count": None}
            if review is not None:  # the machine's answer: its boxes' (all reviewed blank) or blank
                machine = " + ".join(dict.fromkeys(removed)) or "blank"
                row = _reviewed(row, review, machine, None, box=False, counts=False) or row
            if row["observationType"] == "animal" and row.get("scientificName"):
                taxa.add(row["scientificName"], names.get(row["scientificName"]), review and review.get("taxon_rank"))  # fmt: skip
            photo.append(row)
        rows += photo
    return rows


def _rank(row: dict[str, Any], answer: Answer, review: dict[str, Any] | None) -> str | None:
    if review is not None:
        return review.get("taxon_rank")
    return answer.taxon_rank


def _reviewed(row: dict[str, Any], review: dict[str, Any], machine_label: str | None, machine_probability: float | None, box: bool, counts: bool) -> dict[str, Any] | None:  # fmt: skip
    """`row` as the reviewer decided: their type, taxon and count, classificationMethod
    human, classifiedBy the reviewer, classificationTimestamp the review's time; the machine's
    answer kept in observationTags (Camtrap DP has no column for a second classification).
    None when a reviewer says a box is blank (nothing there): the box is no observation.
    `counts`: whether the review's count is this row's (a box's own review, an event's)."""
    kind = review["observation_type"]
    if kind == "blank" and box:
        return None
    machine = [f"machineLabel:{machine_label or row['observationType']}"]
    if machine_probability is not None:
        machine.append(f"machineProbability:{round(float(machine_probability), 4)}")
    if row.get("classificationProbability") is not None and row.get("scientificName"):
        machine.append(f"machineClassifiedBy:{row['classifiedBy']}")
    tags = [t for t in (row.get("observationTags") or "").split(" | ") if t]
    out = {
        **row,
        "observationType": kind,
        "scientificName": review["scientific_name"] if kind == "animal" else None,
        "classificationMethod": "human",
        "classifiedBy": review["reviewer"],
        "classificationTimestamp": utc_z(review["reviewed_at"]),
        "classificationProbability": None,  # "omit ... for human classifications"
        "observationTags": " | ".join([*tags, *machine]),
        "observationComments": review.get("comment"),
    }
    if kind == "blank":
        out.update(count=None, bboxX=None, bboxY=None, bboxWidth=None, bboxHeight=None)
    elif review.get("count") is not None and counts:
        out["count"] = int(review["count"]) or None
    return out


def _tags(obs: dict[str, Any], answer: Answer) -> str:
    """Camtrap DP's `key:value | key:value` tags: what the columns have no place for."""
    tags = [f"detectionConfidence:{round(float(obs['detection_conf']), 4)}"]
    if obs.get("classifier_label"):
        tags.append(f"classifierLabel:{obs['classifier_label']}")
        if not answer.named and obs.get("classification_probability") is not None:
            tags.append(f"classifierProbability:{round(float(obs['classification_probability']), 4)}")  # fmt: skip
    if answer.source not in (None, "classifier"):  # image | rollup | geofence
        tags.append(f"labelSource:{answer.source}")
    return " | ".join(tags)


def _event_level(results: Results, dated: list[dict[str, Any]], zones: dict[str, tzinfo], taxa: Taxa, names: dict[str, str], reviews: Reviews, excluded: Excluded) -> list[dict[str, Any]]:  # fmt: skip
    """One row per event (sequence): its voted species, and its count = most boxes in one photo."""
    photos: dict[str, list[dict[str, Any]]] = {}
    for media in dated:
        photos.setdefault(media["event_id"], []).append(media)
    rows = []
    for event in results.events:
        members = photos.get(event["event_id"], [])
        if event["start"] is None or not members:
            excluded.events.append({"event_id": event["event_id"], "reason": "no capture time"})
            continue
        zone = zones[event["deployment_id"]]
        kind = event["observation_type"]
        name = event["scientific_name"] if kind == "animal" else None
        count = max(m[COUNT_COLUMN[kind]] for m in members) if kind in COUNT_COLUMN else None
        first = members[0]
        named = bool(name)
        row = {
            "observationID": f"{event['event_id']}-event", "deploymentID": event["deployment_id"],
            "eventID": event["event_id"], "eventStart": local_iso(event["start"], zone),
            "eventEnd": local_iso(event["end"] or event["start"], zone),
            "observationLevel": "event", "observationType": kind, "scientificName": name,
            "count": count or None, "classificationMethod": "machine",
            "classifiedBy": f"{first['classifier']}/{first['classifier_version']}" if named
            else f"{first['detector']}/{first['detector_version']}",
            "classificationTimestamp": utc_z(max(m["processed_at"] for m in members)),
            "classificationProbability": _number(event["probability"]) if named else None,
            "observationTags": f"classifierLabel:{event['label']} | photos:{event['media_count']}"
            if event["label"] else f"photos:{event['media_count']}",
        }  # fmt: skip
        rank = event.get("taxon_rank")
        review = reviews.events.get(event["event_id"])
        if review is not None:
            row = _reviewed(row, review, event["label"] or kind, event["probability"], box=False, counts=True) or row  # fmt: skip
            rank = review.get("taxon_rank")
        if row["scientificName"]:
            taxa.add(row["scientificName"], names.get(row["scientificName"]), rank)
        rows.append(row)
    return rows


def sort_key(row: dict[str, Any]) -> tuple:
    """Observations in a stable, readable order: by time, events before their photos' rows."""
    level = 0 if row["observationLevel"] == "event" else 1
    index = detection_index(row["observationID"]) if row.get("mediaID") else -1
    return (row["deploymentID"], row["eventStart"], row.get("eventID") or "", level, row.get("mediaID") or "", index)  # fmt: skip
