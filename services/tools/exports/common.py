"""What both exports share: the result tables read back, file paths below a base, writing out.

The exports read tables only through `read_table`, so they work the same on a local folder and
on `s3://` results, whatever the sink's file layout.
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec

from trapline.pipelines.readers import read_table


class ExportError(ValueError):
    """An export that cannot be written as asked; the message names the input and the fix."""


@dataclass
class Results:
    """The four result tables of one results root, as rows (dicts in the documented schemas)."""

    root: str
    media: list[dict[str, Any]]
    observations: list[dict[str, Any]]
    events: list[dict[str, Any]]
    failures: list[dict[str, Any]]

    def observations_by_media(self) -> dict[str, list[dict[str, Any]]]:
        """Each photo's detections, best first (observation_id ends in the detection's index)."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in self.observations:
            grouped.setdefault(row["media_id"], []).append(row)
        for rows in grouped.values():
            rows.sort(key=lambda row: detection_index(row["observation_id"]))
        return grouped


def read_results(root: str, storage_options: Mapping[str, Any] | None = None) -> Results:
    """All rows under `root`; a root with neither media nor failures is an error, not a no-op."""
    tables = {  # the tables' S3 options come from the process (configure_fsspec)
        name: read_table(root, name).to_pylist()
        for name in ("media", "observations", "events", "failures")
    }
    if not tables["media"] and not tables["failures"]:
        raise ExportError(
            f"no results under {root}: no media or failures rows "
            "(point at the folder or URL given to `trapline run --out` / `trapline serve --out`)"
        )
    return Results(root=root, **tables)


def detection_index(observation_id: str) -> int:
    """The detection's rank in its photo: observation ids are `<media_id>-<index>`."""
    tail = observation_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def common_base(uris: Iterable[str]) -> str:
    """The deepest folder that holds every URI ('' when they share none, e.g. s3 and local)."""
    common: list[str] | None = None
    for uri in uris:
        folder = uri.split("/")[:-1]
        if common is None:
            common = folder
            continue
        length = 0
        for mine, theirs in zip(common, folder):
            if mine != theirs:
                break
            length += 1
        common = common[:length]
    base = "/".join(common or [])
    # "s3:" or "s3:/" alone is not a folder; neither is "" (relative paths).
    return "" if base.endswith(":") or base.endswith(":/") else base


def relative_to(uri: str, base: str) -> str:
    """`uri` below `base`, with forward slashes; unchanged when it is not below it."""
    if base and uri.startswith(base.rstrip("/") + "/"):
        return uri[len(base.rstrip("/")) + 1 :]
    return uri


def media_type(uri: str) -> str:
    """MIME type from the file name; the pipeline only accepts images, so JPEG is the fallback."""
    guessed, _ = mimetypes.guess_type(posixpath.basename(uri))
    return guessed or "image/jpeg"


def utc_z(when: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the second (Camtrap DP's classificationTimestamp)."""
    if when is None:
        return None
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_text(url: str, text: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a file at a local path or fsspec URL, creating its folder."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
