"""Validate a Camtrap DP 1.0.2 package offline, against the vendored official schemas.

Three checks, each with the tool made for it:
1. datapackage.json against the Camtrap DP profile (`jsonschema`, draft 4, every format checked);
2. datapackage.json against the Data Package standard itself (`frictionless`);
3. the three CSV tables against the official table schemas (`frictionless`: types, patterns,
   enums, required and unique fields, primary and foreign keys across the tables).

Quirks relied on:
- The profile `$ref`s two remote schemas. The Data Package one is given as `{}` here because
  check 2 covers it; the GeoJSON one (for `spatial`) is the copy that ships inside frictionless
  (`frictionless/assets/profiles/geojson.json`). Nothing is fetched.
- frictionless would download the profile and table schemas named by URL in datapackage.json
  (and fail offline), so checks 2 and 3 run on a copy whose `schema`s are the vendored dicts and
  whose `profile` is dropped.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry
from referencing.jsonschema import DRAFT4

from trapline.services.tools.exports.camtrap_rows import TABLES, table_schema

DATA_PACKAGE_SCHEMA = "https://specs.frictionlessdata.io/schemas/data-package.json"
GEOJSON_SCHEMA = "http://json.schemastore.org/geojson.json"


@dataclass
class Validation:
    """The outcome: `valid`, and every error as `where: what`."""

    errors: list[str] = field(default_factory=list)
    rows_checked: int = 0

    @property
    def valid(self) -> bool:
        return not self.errors


def validate_package(folder: str | Path) -> Validation:
    """Check the package in a local folder (datapackage.json and its CSV tables)."""
    folder = Path(folder)
    outcome = Validation()
    try:
        package = json.loads((folder / "datapackage.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        outcome.errors.append(f"datapackage.json: cannot be read: {error}")
        return outcome
    outcome.errors += profile_errors(package)
    local = _with_local_schemas(package)
    outcome.errors += _frictionless_descriptor_errors(local)
    table_errors, rows = _frictionless_table_errors(local, folder)
    outcome.errors += table_errors
    outcome.rows_checked = rows
    return outcome


def profile_errors(package: dict[str, Any]) -> list[str]:
    """datapackage.json against the Camtrap DP profile."""
    validator = jsonschema.Draft4Validator(
        _vendored("camtrap-dp-profile.json"),
        registry=_registry(),
        format_checker=jsonschema.FormatChecker(),  # draft 4's own list lacks `date`
    )
    return [
        f"datapackage.json {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}"
        for e in sorted(validator.iter_errors(package), key=lambda e: list(map(str, e.path)))
    ]


def _registry() -> Registry:
    geojson = json.loads(
        (resources.files("frictionless") / "assets" / "profiles" / "geojson.json").read_text()
    )
    return Registry().with_resources([
        (DATA_PACKAGE_SCHEMA, DRAFT4.create_resource({})),
        (GEOJSON_SCHEMA, DRAFT4.create_resource(geojson)),
    ])  # fmt: skip


def _vendored(name: str) -> dict[str, Any]:
    folder = resources.files("trapline.services.tools.exports") / "schemas"
    return json.loads((folder / name).read_text(encoding="utf-8"))


def _with_local_schemas(package: dict[str, Any]) -> dict[str, Any]:
    local = copy.deepcopy(package)
    local.pop("profile", None)
    for resource in local.get("resources", []):
        if resource.get("name") in TABLES:
            resource["schema"] = table_schema(resource["name"])
    return local


def _frictionless_descriptor_errors(local: dict[str, Any]) -> list[str]:
    from frictionless import Package

    report = Package.validate_descriptor(local)
    return [f"datapackage.json: {error.note}" for error in report.errors]


def _frictionless_table_errors(local: dict[str, Any], folder: Path) -> tuple[list[str], int]:
    from frictionless import Package, Resource, Schema

    found = {r.get("name"): r for r in local.get("resources", [])}
    missing = [t for t in TABLES if t not in found or not (folder / found[t]["path"]).is_file()]
    if missing:
        return [f"missing table(s): {', '.join(missing)}"], 0
    tables = [
        Resource(
            name=name,
            path=found[name]["path"],
            schema=Schema.from_descriptor(table_schema(name)),
            format="csv",
            encoding="utf-8",
        )
        for name in TABLES
    ]
    report = Package(resources=tables, basepath=str(folder)).validate()
    errors = []
    for task in report.tasks:
        for error in task.errors:
            where = task.name
            row = getattr(error, "row_number", None)
            field_name = getattr(error, "field_name", None)
            if row:
                where += f" row {row}"
            if field_name:
                where += f" {field_name}"
            errors.append(f"{where}: {error.type}: {error.note or error.message}")
    rows = sum(task.stats.get("rows") or 0 for task in report.tasks)
    return errors, rows
