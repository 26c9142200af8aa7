"""`trapline export camtrap-dp`: a Camtrap DP 1.0.2 package from the result tables.

Camtrap DP (TDWG) is how camera-trap data reaches GBIF and the tools around it (camtrapdp in R,
Agouti, Trapper). The package is built in a local temporary folder, validated there against the
vendored official schemas (`camtrap_validate`), then copied to `out` (a folder or an fsspec URL),
so what lands at `out` is exactly what was checked.

People: a photo with a person detection has `filePublic = false` (media.file_public).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec

from trapline.pipelines.deployments import Deployments, load_deployments
from trapline.services.tools.exports.answers import run_root
from trapline.services.tools.exports.camtrap_metadata import descriptor, read_metadata
from trapline.services.tools.exports.camtrap_rows import (
    TABLES,
    CamtrapTables,
    Excluded,
    build_tables,
    columns,
    sort_key,
)
from trapline.services.tools.exports.camtrap_validate import Validation, validate_package
from trapline.services.tools.exports.common import ExportError, read_results
from trapline.services.tools.exports.reviewed import Reviews, read_reviews

LEVELS = {"both": ("media", "event"), "media": ("media",), "event": ("event",)}


@dataclass
class CamtrapReport:
    """What the export wrote and what the user should look at."""

    out: str
    rows: dict[str, int] = field(default_factory=dict)
    not_public: int = 0  # media rows with filePublic = false (people)
    excluded: Excluded = field(default_factory=Excluded)
    failures_not_exported: int = 0  # failures rows: no photo to describe in Camtrap DP
    to_fill_in: list[str] = field(default_factory=list)
    draft: bool = False  # written with placeholders (`--draft`): not for publication
    base: str = ""  # the folder filePath is relative to (the folder given to the run)
    reviewed: int = 0  # events and boxes whose reviewed labels the package carries
    notes: list[str] = field(default_factory=list)
    validation: Validation | None = None


def export_camtrap_dp(
    results_root: str,
    out: str,
    deployments: Deployments | str | None,
    metadata_file: str | None = None,
    observation_level: str = "both",
    media_url: str | None = None,
    validate: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    created: datetime | None = None,
    draft: bool = False,
    reviews: bool = True,
    base: str | None = None,
) -> CamtrapReport:
    """Write the package of `results_root` to the folder `out`; returns what was done.

    `deployments`: loaded deployments or their file (coordinates are required by Camtrap DP).
    `observation_level`: both | media | event. `media_url`: public URL prefix of the photos
    (`filePath` is the photo's path below the folder given to the run, behind it).
    `draft`: write a package whose metadata still has placeholders (no contributors, no
    licence, ...); without it such a package is refused before anything is written.
    `reviews`: use people's reviewed labels where there are any. `base`: the folder
    `filePath` is relative to (default: the folder given to the run, `answers.run_root`).
    """
    if observation_level not in LEVELS:
        raise ExportError(f"observation level must be one of {', '.join(LEVELS)}, not {observation_level!r}")  # fmt: skip
    levels = LEVELS[observation_level]
    if deployments is None or isinstance(deployments, str):
        if not deployments:
            raise ExportError(
                "Camtrap DP needs each deployment's coordinates and period: give the "
                "deployments file (`--deployments FILE`, or the deployments_file setting)"
            )
        deployments = load_deployments(deployments)
    metadata = read_metadata(metadata_file)
    if metadata.to_fill_in and not draft:
        raise ExportError(
            "the package metadata is incomplete: "
            + "; ".join(metadata.to_fill_in)
            + ". Give them in a metadata file (--metadata FILE.yaml, see docs/exports.md), "
            "or pass --draft to write a draft package that says what is missing"
        )
    results = read_results(results_root, storage_options)
    base = base.rstrip("/") if base else run_root([*results.media, *results.failures])
    reviewed = read_reviews(results_root) if reviews else Reviews()
    tables = build_tables(results, deployments, levels, media_url, base, reviewed)
    if not tables.media:
        raise ExportError(
            f"{results_root}: no photo with a capture time; Camtrap DP requires timestamps "
            f"({len(tables.excluded.media)} photos without one)"
        )
    package = descriptor(tables, metadata, levels, results_root, created, draft=draft)
    report = CamtrapReport(
        out=out,
        rows={name: len(getattr(tables, name)) for name in TABLES},
        not_public=sum(not row["filePublic"] for row in tables.media),
        excluded=tables.excluded,
        failures_not_exported=len(results.failures),
        to_fill_in=metadata.to_fill_in,
        draft=bool(draft and metadata.to_fill_in),
        base=base,
        reviewed=len(reviewed),
        notes=tables.notes,
    )
    with tempfile.TemporaryDirectory(prefix="trapline-camtrap-") as scratch:
        write_package(Path(scratch), tables, package)
        if validate:
            report.validation = validate_package(scratch)
        _copy_out(Path(scratch), out, storage_options)
    return report


def write_package(folder: Path, tables: CamtrapTables, package: dict[str, Any]) -> None:
    """datapackage.json and the three CSV files, headers in the official column order."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "deployments": tables.deployments,
        "media": sorted(tables.media, key=lambda r: (r["deploymentID"], r["timestamp"], r["mediaID"])),
        "observations": sorted(tables.observations, key=sort_key),
    }  # fmt: skip
    for name in TABLES:
        (folder / f"{name}.csv").write_text(to_csv(columns(name), rows[name]), encoding="utf-8")
    (folder / "datapackage.json").write_text(json.dumps(package, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip


def to_csv(header: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV as Camtrap DP reads it: empty cell for null, true/false for booleans."""
    unknown = {key for row in rows for key in row} - set(header)
    if unknown:  # a mapping bug, never a silent column loss
        raise ExportError(f"columns not in the Camtrap DP schema: {sorted(unknown)}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in header])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _copy_out(folder: Path, out: str, storage_options: Mapping[str, Any] | None) -> None:
    fs, path = fsspec.core.url_to_fs(out, **dict(storage_options or {}))
    fs.makedirs(path, exist_ok=True)
    for file in sorted(folder.iterdir()):
        fs.put_file(str(file), f"{path.rstrip('/')}/{file.name}")
