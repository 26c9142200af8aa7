"""datapackage.json of a Camtrap DP 1.0.2 package: what the tables give, and what a person must say.

The tables give `spatial` (the deployments' coordinates), `temporal` (the photos' dates),
`taxonomic` (the scientific names written) and `created`. Who made the data, under which licence,
and how the cameras were placed only a person knows: they come from a small YAML file
(`--metadata FILE.yaml`, keys as in datapackage.json). A package whose file leaves out the
contributors, the licences, the project title or the sampling design is incomplete: the export
refuses it unless asked for a draft (`--draft`), which gets placeholders ("TO FILL IN") and says
in its description what is missing, so no placeholder is published unnoticed.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec
import yaml

from trapline.services.tools.exports.camtrap_rows import CamtrapTables, Taxa
from trapline.services.tools.exports.common import ExportError

VERSION = "1.0.2"
BASE_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{VERSION}"
PROFILE_URL = f"{BASE_URL}/camtrap-dp-profile.json"

# Keys the metadata file may set (datapackage.json names); anything else is a typo, refused.
PACKAGE_KEYS = {
    "name", "id", "title", "description", "version", "keywords", "image", "homepage",
    "contributors", "licenses", "bibliographicCitation", "coordinatePrecision",
    "relatedIdentifiers", "references", "sources", "project",
}  # fmt: skip
PROJECT_KEYS = {
    "id", "title", "acronym", "description", "path", "samplingDesign", "captureMethod",
    "individualAnimals",
}  # fmt: skip
# Ranks of the non-species names our classifier uses; a two-word name is a species.
RANKS = {
    "Aves": "class", "Lagomorpha": "order", "Rodentia": "order", "Equidae": "family",
    "Mustelidae": "family",
}  # fmt: skip
TAXON_RANKS = {"kingdom", "phylum", "class", "order", "family", "genus", "species", "subspecies"}
PLACEHOLDER = "TO FILL IN"
DRAFT_NOTE = "DRAFT, not for publication"


@dataclass
class Metadata:
    """The user's part of datapackage.json, and the required fields that got a default."""

    values: dict[str, Any]
    to_fill_in: list[str]


def read_metadata(url: str | None) -> Metadata:
    """Read the metadata YAML (None: defaults only) and fill the required fields it lacks."""
    values: dict[str, Any] = {}
    if url:
        try:
            with fsspec.open(url, "r", encoding="utf-8") as handle:
                values = yaml.safe_load(handle) or {}
        except FileNotFoundError:
            raise ExportError(f"metadata file not found: {url}") from None
        except yaml.YAMLError as error:
            raise ExportError(f"{url}: not valid YAML: {error}") from None
        if not isinstance(values, dict):
            raise ExportError(f"{url}: expected a mapping of datapackage.json keys")
        unknown = sorted(set(values) - PACKAGE_KEYS)
        unknown += [f"project.{k}" for k in sorted(set(values.get("project") or {}) - PROJECT_KEYS)]
        if unknown:
            raise ExportError(
                f"{url}: unknown keys {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(PACKAGE_KEYS))}; project: {', '.join(sorted(PROJECT_KEYS))})"
            )
    to_fill_in = [f"{where} (still {PLACEHOLDER!r})" for where in _placeholders(values)]
    if not values.get("contributors"):
        values["contributors"] = [{"title": PLACEHOLDER, "role": "contact"}]
        to_fill_in.append("contributors (who made the data; a contact, a rightsHolder)")
    if not values.get("licenses"):
        to_fill_in.append("licenses (one with scope data, one with scope media; GBIF needs one)")
    else:  # Camtrap DP: "at least a license for the content of the package and one for the media"
        scopes = {x.get("scope") for x in values["licenses"] if isinstance(x, dict)}
        to_fill_in += [f"licenses: none with scope {scope}" for scope in ("data", "media") if scope not in scopes]  # fmt: skip
    project = dict(values.get("project") or {})
    if not project.get("title"):
        project["title"] = values.get("title") or PLACEHOLDER
        if not values.get("title"):
            to_fill_in.append("project.title (or title)")
    if not project.get("samplingDesign"):
        project["samplingDesign"] = "opportunistic"
        to_fill_in.append(
            "project.samplingDesign (a draft takes 'opportunistic'; say how cameras were placed)"
        )
    project.setdefault("captureMethod", ["activityDetection"])
    project.setdefault("individualAnimals", False)
    values["project"] = project
    return Metadata(values, to_fill_in)


def _placeholders(value: Any, where: str = "") -> list[str]:
    """Where a metadata file still holds the placeholder text (a template copied as is)."""
    if isinstance(value, str):
        return [where or "(top)"] if PLACEHOLDER.lower() in value.lower() else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _placeholders(v, f"{where}.{k}".strip("."))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _placeholders(v, f"{where}[{i}]")]
    return []


def descriptor(
    tables: CamtrapTables,
    metadata: Metadata,
    levels: tuple[str, ...],
    results_root: str,
    created: datetime | None = None,
    draft: bool = False,
) -> dict[str, Any]:
    """The datapackage.json of these tables, required properties first. `draft`: the
    description says that the package is a draft and what is missing (`to_fill_in`)."""
    values = dict(metadata.values)
    if draft and metadata.to_fill_in:
        missing = "; ".join(metadata.to_fill_in)
        said = values.get("description")
        values["description"] = f"{DRAFT_NOTE}: missing {missing}." + (f" {said}" if said else "")
    project = {**values.pop("project"), "observationLevel": list(levels)}
    title = values.pop("title", None) or (
        None if project["title"] == PLACEHOLDER else project["title"]
    )
    name = values.pop("name", None) or _slug(title or "")
    package: dict[str, Any] = {
        "resources": [
            {
                "name": table,
                "path": f"{table}.csv",
                "profile": "tabular-data-resource",
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "schema": f"{BASE_URL}/{table}-table-schema.json",
            }
            for table in ("deployments", "media", "observations")
        ],
        "profile": PROFILE_URL,
        "name": name,
        "id": str(values.pop("id", None) or uuid.uuid5(uuid.NAMESPACE_URL, results_root)),
        "created": (created or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if title:
        package["title"] = title
    package["contributors"] = values.pop("contributors")
    package.update(values)  # description, licenses, keywords, ... as the user wrote them
    package.setdefault("sources", [{"title": "Trapline", "version": _trapline_version()}])
    package["project"] = project
    package["spatial"] = spatial(tables.deployments)
    package["temporal"] = temporal(tables.media)
    package["taxonomic"] = taxonomic(tables.taxa)
    return package


def spatial(deployments: list[dict[str, Any]]) -> dict[str, Any]:
    """GeoJSON of the deployments: a Point for one place, else their bounding box Polygon."""
    points = sorted({(d["longitude"], d["latitude"]) for d in deployments})
    if len(points) == 1:
        return {"type": "Point", "coordinates": list(points[0])}
    if not points:
        return {"type": "GeometryCollection", "geometries": []}
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    west, east, south, north = min(xs), max(xs), min(ys), max(ys)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def temporal(media: list[dict[str, Any]]) -> dict[str, str]:
    """First and last capture dates, in the cameras' own time (the media timestamps' dates)."""
    dates = sorted(row["timestamp"][:10] for row in media)
    if not dates:
        raise ExportError("no photo with a capture time: a Camtrap DP package needs at least one")
    return {"start": dates[0], "end": dates[-1]}


def taxonomic(taxa: Taxa) -> list[dict[str, Any]]:
    """Each scientific name written, with its rank (the tables' `taxon_rank` when they have
    it) and the classifier's English label as vernacular name."""
    entries = []
    for name in sorted(taxa.labels):
        entry: dict[str, Any] = {"scientificName": name}
        rank = taxa.ranks.get(name) or RANKS.get(name)
        rank = rank or ("species" if len(name.split()) == 2 else None)
        if rank in TAXON_RANKS:
            entry["taxonRank"] = rank
        english = taxa.labels[name]
        if english and english != name and english != "undefined":
            entry["vernacularNames"] = {"eng": english}
        entries.append(entry)
    return entries


def _slug(text: str) -> str:
    """A Data Package name: lower case letters, digits and - . _ only."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-")
    return slug or "trapline-camtrap-dp"


def _trapline_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trapline")
    except PackageNotFoundError:
        return "unknown"
