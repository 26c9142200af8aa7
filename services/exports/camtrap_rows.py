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
from datetime import datetime, timezone, tzinfo
from importlib import resources
from typing import Any

from trapline.pipelines.deployments import Deployment, Deployments
from trapline.services.exports.common import (
    ExportError,
    Results,
    detection_index,
    media_type,
    utc_z,
)

TABLES = ("deployments", "media", "observations")
OBSERVATION_TYPES = {"animal": "animal", "person": "human", "vehicle": "vehicle"}
COUNT_COLUMN = {"animal": "animal_count", "human": "person_count", "vehicle": "vehicle_count"}
DIGITS = 6  # float32 values written as their meaningful digits, not 0.5367000102996826


def table_schema(name: str) -> dict[str, Any]:
    """The official Camtrap DP 1.0.2 table schema `name`, from the vendored copy."""
    folder = resources.files("trapline.services.exports") / "schemas"
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
    """The taxa written: scientific name -> the classifier's English label, and -> rank."""

    labels: dict[str, str] = field(default_factory=dict)
    ranks: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, label: str | None, rank: str | None = None) -> None:
        self.labels.setdefault(name, label or name)
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
    base: str = "",
) -> CamtrapTables:
    """Map our tables to Camtrap DP's. `levels`: observationLevel rows to write.
    `media_url`: replaces `base` at the start of each photo's URI (where the photos are published)."""
    excluded, notes, taxa = Excluded(), [], Taxa()
    dated = []
    for row in results.media:
        if row["timestamp"] is None:
            excluded.media.append({"uri": row["uri"], "reason": "no capture time (timestamp)"})
        else:
            dated.append(row)
    used = sorted({row["deployment_id"] for row in dated})
    _require_coordinates(used, deployments)
    zones = {d: deployments[d].tz() or timezone.utc for d in used}

    media_rows = [_media_row(row, zones, media_url, base) for row in dated]
    observations: list[dict[str, Any]] = []
    if "media" in levels:
        observations += _media_level(results, dated, zones, taxa)
    if "event" in levels:
        observations += _event_level(results, dated, zones, taxa, excluded)
    deployment_rows = [
        _deployment_row(
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


def local_iso(when: datetime, zone: tzinfo) -> str:
    """The time in the camera's zone, with its offset, to the second."""
    return when.astimezone(zone).isoformat(timespec="seconds")


def _number(value: float | None) -> float | None:
    return None if value is None else round(float(value), DIGITS)


def _file_path(uri: str, media_url: str | None, base: str) -> str:
    """A URL Camtrap DP accepts (no leading '/', '.', '~', no '..'): the published URL when
    `media_url` is given, else the URI itself, local paths as file:// URLs."""
    if media_url and base and uri.startswith(base.rstrip("/") + "/"):
        return media_url.rstrip("/") + "/" + uri[len(base.rstrip("/")) + 1 :]
    if "://" in uri:
        return uri
    from pathlib import Path

    return Path(uri).absolute().as_uri()


def _media_row(row: dict[str, Any], zones: dict[str, tzinfo], media_url: str | None, base: str) -> dict[str, Any]:  # fmt: skip
    issue = row.get("timestamp_issue")
    return {
        "mediaID": row["media_id"],
        "deploymentID": row["deployment_id"],
        "captureMethod": "activityDetection",
        "timestamp": local_iso(row["timestamp"], zones[row["deployment_id"]]),
        "filePath": _file_path(row["uri"], media_url, base),
        "filePublic": bool(row["file_public"]),  # False when a person was detected
        "fileName": row["uri"].rsplit("/", 1)[-1],
        "fileMediatype": media_type(row["uri"]),
        "mediaComments": f"timestamp issue: {issue}" if issue else None,
    }


def _media_level(results: Results, dated: list[dict[str, Any]], zones: dict[str, tzinfo], taxa: Taxa) -> list[dict[str, Any]]:  # fmt: skip
    """One row per detection; a photo without detections gets one `blank` row."""
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
        detections = [o for o in by_media.get(media["media_id"], []) if not o.get("is_static")]
        if not detections:
            rows.append({**common, "observationID": f"{media['media_id']}-blank",
                         "observationType": "blank", "classifiedBy": detector})  # fmt: skip
        for obs in detections:
            kind = OBSERVATION_TYPES[obs["category"]]
            name = obs["scientific_name"] if kind == "animal" else None
            if name:
                taxa.add(name, _vernacular(obs), obs.get("taxon_rank"))
            rows.append({
                **common, "observationID": obs["observation_id"], "observationType": kind,
                "scientificName": name, "count": 1,
                "bboxX": _number(obs["bbox_x"]), "bboxY": _number(obs["bbox_y"]),
                "bboxWidth": _number(obs["bbox_width"]), "bboxHeight": _number(obs["bbox_height"]),
                "classifiedBy": obs["classified_by"] if name else detector,
                # The label's probability when named, else the detector's score for the type.
                "classificationProbability": _number(
                    _label_probability(obs) if name else obs["detection_conf"]
                ),
                "observationTags": _tags(obs),
            })  # fmt: skip
    return rows


def _vernacular(obs: dict[str, Any]) -> str:
    """The classifier's own (English) label for the taxon; after a roll-up `label` is the
    higher taxon's scientific name, and `classifier_label` the classifier's answer."""
    return obs["label"] if obs["label"] != obs["scientific_name"] else obs.get("classifier_label") or obs["label"]  # fmt: skip


def _label_probability(obs: dict[str, Any]) -> float | None:
    """Post-processing's probability of the final label when the tables have it."""
    if obs.get("label_probability") is not None:
        return obs["label_probability"]
    return obs["classification_probability"]


def _tags(obs: dict[str, Any]) -> str:
    """Camtrap DP's `key:value | key:value` tags: what the columns have no place for."""
    tags = [f"detectionConfidence:{round(float(obs['detection_conf']), 4)}"]
    if obs["label"]:
        tags.append(f"classifierLabel:{obs['label']}")
    return " | ".join(tags)


def _event_level(results: Results, dated: list[dict[str, Any]], zones: dict[str, tzinfo], taxa: Taxa, excluded: Excluded) -> list[dict[str, Any]]:  # fmt: skip
    """One row per event (sequence): its voted species, and its count = most boxes in one photo."""
    photos: dict[str, list[dict[str, Any]]] = {}
    for media in dated:
        photos.setdefault(media["event_id"], []).append(media)
    labels = {o["scientific_name"]: _vernacular(o) for o in results.observations if o["scientific_name"]}  # fmt: skip
    rows = []
    for event in results.events:
        members = photos.get(event["event_id"], [])
        if event["start"] is None or not members:
            excluded.events.append({"event_id": event["event_id"], "reason": "no capture time"})
            continue
        zone = zones[event["deployment_id"]]
        kind = event["observation_type"]
        name = event["scientific_name"] if kind == "animal" else None
        if name:
            label = event["label"] if event["label"] != name else labels.get(name)
            taxa.add(name, label or labels.get(name), event.get("taxon_rank"))
        count = max(m[COUNT_COLUMN[kind]] for m in members) if kind in COUNT_COLUMN else None
        first = members[0]
        named = bool(name)
        rows.append({
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
        })  # fmt: skip
    return rows


def _deployment_row(deployment: Deployment, media: list[dict[str, Any]], zone: tzinfo, notes: list[str]) -> dict[str, Any]:  # fmt: skip
    """Camtrap DP requires a period: a missing start/end is taken from the photos, and said so."""
    start, end = deployment.start, deployment.end
    times = sorted(m["timestamp"] for m in media)
    if start is None:
        start = times[0]
        notes.append(
            f"deployment {deployment.deployment_id}: no start, took its first photo's time"
        )
    if end is None:
        end = times[-1]
        notes.append(f"deployment {deployment.deployment_id}: no end, took its last photo's time")
    uncertainty = deployment.coordinate_uncertainty_m
    return {
        "deploymentID": deployment.deployment_id,
        "locationID": deployment.location_id,
        "locationName": deployment.location_name,
        "latitude": deployment.latitude,
        "longitude": deployment.longitude,
        "coordinateUncertainty": None if uncertainty is None else max(1, round(uncertainty)),
        "deploymentStart": local_iso(start, zone),
        "deploymentEnd": local_iso(end, zone),
        "cameraID": deployment.camera_id,
        "cameraModel": deployment.camera_model,
        "cameraHeight": deployment.camera_height_m,
        "timestampIssues": any(m.get("timestamp_issue") for m in media),
    }


def sort_key(row: dict[str, Any]) -> tuple:
    """Observations in a stable, readable order: by time, events before their photos' rows."""
    level = 0 if row["observationLevel"] == "event" else 1
    index = detection_index(row["observationID"]) if row.get("mediaID") else -1
    return (row["deploymentID"], row["eventStart"], row.get("eventID") or "", level, row.get("mediaID") or "", index)  # fmt: skip
