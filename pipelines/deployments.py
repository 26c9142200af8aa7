"""Camera deployments: where and when a camera stood, and the clock it kept.

A deployments file tells the pipeline what a photo's bytes cannot: the time zone of the camera's
naive EXIF clock, its coordinates and country (for the Camtrap DP export, the report's map and
geofencing) and the period it was in the field (a photo dated outside it has a wrong clock).

Accepted forms, read through fsspec (local path or s3://...):
- CSV with a header row;
- YAML or JSON: a list of records, or `{"deployments": [...]}`;
- a folder of such files (the upload API keeps one JSON file per deployment).
Column names are ours (`deployment_id`, `utc_offset`, ...) or Camtrap DP's (`deploymentID`,
`locationName`, `deploymentStart`, ...), so a Camtrap DP `deployments.csv` works as it is.

Time zones. Most camera traps keep one fixed offset all season and ignore daylight saving
time, so `utc_offset: "+01:00"` is the faithful description; a camera that does follow DST gets
an IANA name (`Europe/Paris`). With an IANA zone, a naive time that falls in the repeated hour
of an autumn change is ambiguous and one in the skipped spring hour does not exist: both are
resolved the way `zoneinfo` does (fold=0) and flagged in `media.timestamp_issue`, never hidden.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fsspec
import yaml

_OFFSET = re.compile(r"^(?:UTC)?([+-])(\d{1,2}):?(\d{2})$")

# Camtrap DP (and a few common spreadsheet) names -> ours.
_ALIASES = {
    "deploymentid": "deployment_id",
    "deployment": "deployment_id",
    "locationid": "location_id",
    "locationname": "location_name",
    "coordinateuncertainty": "coordinate_uncertainty_m",
    "countrycode": "country",
    "deploymentstart": "start",
    "deploymentend": "end",
    "cameraid": "camera_id",
    "cameramodel": "camera_model",
    "cameraheight": "camera_height_m",
    "timezone": "utc_offset",
    "tz": "utc_offset",
    "lat": "latitude",
    "lon": "longitude",
    "lng": "longitude",
}


class DeploymentsError(ValueError):
    """A deployments file that cannot be used; the message names the file, the row and the fix."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """One camera at one place for one period (Camtrap DP's deployment)."""

    deployment_id: str
    location_id: str | None = None
    location_name: str | None = None
    latitude: float | None = None  # WGS84 decimal degrees
    longitude: float | None = None
    coordinate_uncertainty_m: float | None = None
    country: str | None = None  # ISO 3166-1 alpha-2, upper case
    utc_offset: str | None = None  # "+01:00" (fixed camera clock) or an IANA name ("Europe/Paris")
    camera_id: str | None = None
    camera_model: str | None = None
    camera_height_m: float | None = None
    start: datetime | None = None  # tz-aware; when the camera was set up
    end: datetime | None = None  # tz-aware; when it was taken down

    def tz(self) -> tzinfo | None:
        """The camera clock's zone: the given offset or IANA name, else the offset of `start`."""
        if self.utc_offset:
            return parse_timezone(self.utc_offset)
        if self.start is not None:
            return self.start.tzinfo
        return None

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready record in our own column names (what the upload API stores)."""
        record: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            record[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return record


@dataclass(frozen=True, slots=True)
class Localized:
    """A capture time placed in UTC, and what was doubtful about it (None: nothing)."""

    utc: datetime
    issue: str | None = None  # dst_ambiguous | dst_gap | default_offset | outside_deployment


class Deployments(Mapping[str, Deployment]):
    """Deployments by id; an empty one means 'no deployments file' (every clock gets the default)."""

    def __init__(self, items: Iterable[Deployment] = (), source: str = "<none>"):
        self._by_id: dict[str, Deployment] = {}
        self.source = source
        for item in items:
            if item.deployment_id in self._by_id:
                raise DeploymentsError(
                    f"{source}: deployment {item.deployment_id!r} is listed twice"
                )
            self._by_id[item.deployment_id] = item

    def __getitem__(self, deployment_id: str) -> Deployment:
        return self._by_id[deployment_id]

    def __iter__(self):
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def localize(self, when: datetime, deployment_id: str, default: tzinfo) -> Localized:
        """UTC time of a capture; naive times take the deployment's zone, else `default`."""
        deployment = self._by_id.get(deployment_id)
        issue = None
        if when.tzinfo is None:
            zone = deployment.tz() if deployment else None
            if zone is None:
                zone = default
                issue = "default_offset" if self._by_id else None
            aware, dst_issue = _attach(when, zone)
            issue = dst_issue or issue
        else:
            aware = when
        utc = aware.astimezone(timezone.utc)
        if deployment and not _within(utc, deployment):
            issue = issue or "outside_deployment"
        return Localized(utc, issue)


def parse_timezone(text: str) -> tzinfo:
    """'+01:00', '-0530', 'UTC+2:00', 'Z' or an IANA name -> tzinfo; anything else is an error."""
    value = text.strip()
    if value in {"Z", "UTC", "utc"}:
        return timezone.utc
    match = _OFFSET.match(value)
    if match:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta > timedelta(hours=14):
            raise DeploymentsError(f"UTC offset out of range: {text!r}")
        return timezone(delta if sign == "+" else -delta)
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise DeploymentsError(
            f"not a UTC offset or IANA time zone: {text!r} (use '+01:00' or 'Europe/Paris')"
        ) from error


def _attach(naive: datetime, zone: tzinfo) -> tuple[datetime, str | None]:
    """Give a naive time its zone, and say whether DST made it doubtful."""
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first, None
    # fold=0 and fold=1 differ: the wall time is repeated (autumn) or skipped (spring).
    round_trip = first.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None)
    return first, "dst_ambiguous" if round_trip == naive else "dst_gap"


def _within(utc: datetime, deployment: Deployment) -> bool:
    if deployment.start is not None and utc < deployment.start:
        return False
    return deployment.end is None or utc <= deployment.end


def load_deployments(
    url: str | None, storage_options: Mapping[str, Any] | None = None
) -> Deployments:
    """Read a deployments file or folder; `None` gives the empty set."""
    if not url:
        return Deployments()
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(path):
        raise DeploymentsError(f"deployments file not found: {url}")
    if fs.isdir(path):
        names = sorted(
            p for p in fs.find(path) if p.lower().endswith((".csv", ".json", ".yaml", ".yml"))
        )
        items = [item for name in names for item in _read_one(fs, name)]
    else:
        items = _read_one(fs, path)
    return Deployments(items, source=url)


@lru_cache(maxsize=8)
def cached_deployments(url: str | None) -> Deployments:
    """The deployments of a run, read once per process (a changed file needs a restart)."""
    return load_deployments(url)


def _read_one(fs: Any, path: str) -> list[Deployment]:
    with fs.open(path, "rb") as handle:
        text = handle.read().decode("utf-8-sig")
    if path.lower().endswith(".csv"):
        records: Any = list(csv.DictReader(io.StringIO(text)))
    else:
        try:
            records = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise DeploymentsError(
                f"{path}: not valid {path.rsplit('.', 1)[-1]}: {error}"
            ) from None
        if isinstance(records, dict):
            records = records.get("deployments", [records])
    if not isinstance(records, list):
        raise DeploymentsError(f"{path}: expected a list of deployments")
    return [_record(path, number, record) for number, record in enumerate(records, start=1)]


def _record(path: str, number: int, raw: Any) -> Deployment:
    where = f"{path}, deployment {number}"
    if not isinstance(raw, dict):
        raise DeploymentsError(f"{where}: expected a mapping of column to value")
    known = {f.name for f in fields(Deployment)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _ALIASES.get(str(key).replace("_", "").lower(), str(key))
        if name in known and value not in (None, ""):
            values[name] = value
    if not values.get("deployment_id"):
        raise DeploymentsError(f"{where}: no deployment_id (or deploymentID) column")
    try:
        values["deployment_id"] = str(values["deployment_id"])
        for name in ("latitude", "longitude", "coordinate_uncertainty_m", "camera_height_m"):
            if name in values:
                values[name] = float(values[name])
        for name in ("start", "end"):
            if name in values:
                values[name] = _aware(values[name], values.get("utc_offset"))
        if "country" in values:
            values["country"] = str(values["country"]).strip().upper()
        if isinstance(values.get("utc_offset"), int):
            values["utc_offset"] = _yaml_offset(values["utc_offset"])
        for name in ("location_id", "location_name", "camera_id", "camera_model", "utc_offset"):
            if name in values:
                values[name] = str(values[name])
        deployment = Deployment(**values)
        deployment.tz()  # a bad zone is an error now, not at the first photo
    except (ValueError, TypeError) as error:
        raise DeploymentsError(f"{where}: {error}") from None
    if deployment.latitude is not None and not -90 <= deployment.latitude <= 90:
        raise DeploymentsError(f"{where}: latitude {deployment.latitude} is not in [-90, 90]")
    if deployment.longitude is not None and not -180 <= deployment.longitude <= 180:
        raise DeploymentsError(f"{where}: longitude {deployment.longitude} is not in [-180, 180]")
    return deployment


def _yaml_offset(value: int) -> str:
    """PyYAML reads an unquoted `+01:00` as the base-60 integer 60 (YAML 1.1): undo that.

    Small integers are taken as hours (`utc_offset: 2`), larger ones as YAML's minutes.
    """
    minutes = value * 60 if abs(value) <= 14 else value
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _aware(value: Any, utc_offset: Any) -> datetime:
    """A start/end time; a naive one is read in the deployment's own zone."""
    when = (
        value
        if isinstance(value, datetime)
        else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    if when.tzinfo is None:
        if not utc_offset:
            raise ValueError(
                f"start/end {value!r} has no UTC offset and the deployment none either"
            )
        when = _attach(when, parse_timezone(str(utc_offset)))[0]
    return when
