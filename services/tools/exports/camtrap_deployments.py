"""Rows of Camtrap DP's deployments table, with what the deployments file leaves out filled in
from what is known, and said so (the export's notes).

- `locationID`: the file's `location_id`; else one id per place: the location name as a slug
  (deployments at the same named place share it), else the coordinates.
- `coordinateUncertainty`: the file's `coordinate_uncertainty_m`; else the precision of the
  coordinates as written (4 decimals are a cell of ~11 m by ~8 m at 45°N: 14 m).
- `cameraModel`: `manufacturer-model`, as the standard asks ("Reconyx HF2X" -> "Reconyx-HF2X");
  when the file has none, the photos' EXIF Make and Model.
- `deploymentStart`/`deploymentEnd`: required; a missing one is the first/last photo's time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import datetime, tzinfo
from typing import Any

from trapline.pipelines.deployments import Deployment

M_PER_DEGREE_LATITUDE = 110_574.0  # WGS84, mean
M_PER_DEGREE_LONGITUDE_EQUATOR = 111_320.0


def deployment_row(
    deployment: Deployment, media: list[dict[str, Any]], zone: tzinfo, notes: list[str]
) -> dict[str, Any]:
    """The deployment's Camtrap DP row; `media`: its photos (rows of our media table)."""
    name = deployment.deployment_id
    start, end = deployment.start, deployment.end
    times = sorted(m["timestamp"] for m in media)
    if start is None:
        start = times[0]
        notes.append(f"deployment {name}: no start, took its first photo's time")
    if end is None:
        end = times[-1]
        notes.append(f"deployment {name}: no end, took its last photo's time")
    location = deployment.location_id or location_id(deployment)
    if not deployment.location_id:
        notes.append(f"deployment {name}: no location_id, took {location!r}")
    uncertainty = deployment.coordinate_uncertainty_m
    if uncertainty is None:
        uncertainty = precision_uncertainty(deployment.latitude, deployment.longitude)
        notes.append(
            f"deployment {name}: no coordinate_uncertainty_m, took {max(1, round(uncertainty))} m "
            "from the coordinates' decimals (give the GPS's own if known)"
        )
    model = camera_model(deployment.camera_model, media)
    if model and "-" not in model:
        notes.append(f"deployment {name}: camera model {model!r} has no manufacturer")
    return {
        "deploymentID": name,
        "locationID": location,
        "locationName": deployment.location_name,
        "latitude": deployment.latitude,
        "longitude": deployment.longitude,
        "coordinateUncertainty": max(1, round(uncertainty)),
        "deploymentStart": local_iso(start, zone),
        "deploymentEnd": local_iso(end, zone),
        "cameraID": deployment.camera_id,
        "cameraModel": model,
        "cameraHeight": deployment.camera_height_m,
        "timestampIssues": any(m.get("timestamp_issue") for m in media),
    }


def local_iso(when: datetime, zone: tzinfo) -> str:
    """The time in the camera's zone, with its offset, to the second."""
    return when.astimezone(zone).isoformat(timespec="seconds")


def location_id(deployment: Deployment) -> str:
    """A place's id when the file gives none: its name as a slug, else its coordinates."""
    if deployment.location_name:
        slug = re.sub(r"[^a-z0-9]+", "-", deployment.location_name.lower()).strip("-")
        if slug:
            return slug
    return f"{deployment.latitude:.5f}_{deployment.longitude:.5f}"


def precision_uncertainty(latitude: float | None, longitude: float | None) -> float:
    """Metres from the coordinates to the far corner of the cell their decimals allow
    (a value written with d decimals may have been truncated, not rounded)."""
    if latitude is None or longitude is None:
        raise ValueError("coordinates are required")
    cell = 10.0 ** -max(_decimals(latitude), _decimals(longitude))
    north = cell * M_PER_DEGREE_LATITUDE
    east = cell * M_PER_DEGREE_LONGITUDE_EQUATOR * math.cos(math.radians(latitude))
    return math.hypot(north, east)


def _decimals(value: float) -> int:
    text = repr(float(value))
    if "e" in text or "." not in text:
        return 0
    return len(text.split(".", 1)[1].rstrip("0"))


def camera_model(typed: str | None, media: list[dict[str, Any]]) -> str | None:
    """`manufacturer-model`: the file's value ("Reconyx HF2X" -> "Reconyx-HF2X", a lone model
    gets the photos' EXIF Make), else the photos' most common EXIF Make and Model."""
    exif = Counter(
        (
            " ".join((m.get("camera_make") or "").split()),
            " ".join((m.get("camera_model") or "").split()),
        )  # fmt: skip
        for m in media
        if m.get("camera_make") or m.get("camera_model")
    )
    make, model = exif.most_common(1)[0][0] if exif else ("", "")
    if typed and " ".join(typed.split()):
        text = " ".join(typed.split())
        if " " in text:
            manufacturer, rest = text.split(" ", 1)
            return f"{manufacturer}-{rest}"
        if "-" in text or not make:
            return text  # already manufacturer-model, or a model nobody names the maker of
        return f"{make}-{text}"
    if not model:
        return make or None
    if make and model.lower().startswith(make.lower()):  # EXIF "Canon" / "Canon EOS 5D"
        model = model[len(make) :].strip(" -")
    return f"{make}-{model}" if make and model else (model or make)
