"""`trapline report`: one self-contained HTML page and a spreadsheet from a results folder.

For the ecologist who wants to see the run without writing code: photos processed, blank rate,
detections per class, counts per deployment, a diel activity plot per species, the detection rate
per deployment over time and, when the deployments file gives coordinates, a scatter map with
the species found at each camera. Plots are PNGs embedded as `data:` URIs and the page has no
script and no external link, so it opens offline and can be mailed as one file.
`photos.csv` and `photos.xlsx` beside it hold one row per photo (or video) for spreadsheet users.

Reviewed labels win: where a person reviewed an event (`trapline review`, the reviews table;
the latest review wins), its label and observation type replace the machine's for every photo
of the event, in the plots, the tables and the spreadsheet; the spreadsheet keeps the machine's
label beside it (`machine_label`) and says who reviewed (`reviewed_by`).

Times of day are local: each deployment's zone from the deployments file (`Deployment.tz()`),
UTC for a deployment the file does not place (the page says so). Activity is counted in events
(bursts), not frames, so a 10-frame burst of a fox counts once, as ecologists count it.
Needs the `[report]` extra (matplotlib, openpyxl, pandas).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec

from trapline.pipelines.deployments import Deployments, load_deployments
from trapline.pipelines.readers import DeploymentRows, read_table
from trapline.pipelines.reviews import reviewed_events
from trapline.services.tools.report_season import Season
from trapline.services.tools.report_sheet import photo_sheet, write_sheets
from trapline.services.tools.sort import VIDEO_EXTENSIONS, final_label

try:
    import pandas as pd
except ModuleNotFoundError as error:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "trapline report needs the [report] extra: pip install 'trapline[report]'"
    ) from error


@dataclass
class ReportSummary:
    """What the report counted, for the CLI and the tests."""

    html: str  # path or URL of the page
    csv: str
    xlsx: str
    media: int = 0
    videos: int = 0
    failures: int = 0
    blank_rate: float | None = None
    rate_unit: str = "day"  # detection-rate bins: day, or week for surveys past 90 days
    plots: list[str] = field(default_factory=list)  # ids of the embedded figures


# The media columns the report shows or counts. Not the rest (sha256, camera, model names and
# versions, sizes, processing times): as pandas objects they were over half of the report's
# memory, which grows with the photos it lists.
MEDIA_COLUMNS = [
    "media_id", "deployment_id", "uri", "timestamp", "timestamp_issue", "observation_type",
    "animal_count", "person_count", "vehicle_count", "file_public", "event_id", "event_label",
]  # fmt: skip
OBSERVATION_COLUMNS = ["media_id", "category", "label", "detection_conf"]


def build_report(
    results: str,
    out: str,
    deployments_file: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ReportSummary:
    """Read `results`' tables and write index.html, photos.csv and photos.xlsx under `out`.

    A deployment at a time: its rows go to the spreadsheet and into the counts (`Season`),
    then are let go, so the report's memory does not grow with the season (docs/report.md)."""
    from trapline.services.tools import report_plots as plots

    deployments = load_deployments(deployments_file, storage_options)
    season = Season()
    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    summary = ReportSummary(f"{root}/index.html", f"{root}/photos.csv", f"{root}/photos.xlsx")
    with (
        fs.open(summary.csv, "w", encoding="utf-8", newline="") as csv,
        fs.open(summary.xlsx, "wb") as xlsx,
    ):
        write_sheets(_season_sheets(results, deployments, season), csv, xlsx)
    summary.media, summary.videos = season.media, season.videos
    summary.failures = read_table(results, "failures", columns=["uri"]).num_rows
    if season.media:
        summary.blank_rate = season.types["blank"] / season.media

    sections: list[str] = [_overview(summary, season)]
    figures: list[tuple[str, str, bytes]] = []  # (id, caption, png)
    if season.detections:
        figures.append((
            "detections-per-class", "Detections per class",
            plots.detections_per_class(season.categories, season.labels),
        ))  # fmt: skip
    sections.append(_figures("Detections", figures))
    sections.append(_deployment_table(season))

    diel = [
        (f"diel-{_slug(species)}", f"Diel activity: {species}",
         plots.diel_activity(species, season.diel[species], season.zone_note()))
        for species in sorted(season.diel)
    ]  # fmt: skip
    sections.append(
        _figures(
            "Diel activity per species", diel, "No classified animal event." if not diel else None
        )
    )
    rate, unit = season.detection_rate()
    summary.rate_unit = unit
    rate_fig = (
        [("detection-rate", "Detection rate", plots.detection_rate(rate, unit))]
        if len(rate)
        else []
    )
    sections.append(
        _figures("Detection rate over time", rate_fig, None if rate_fig else "No timestamps.")
    )
    places = _places(season, deployments)
    map_fig = (
        [("deployment-map", "Deployments", plots.deployment_map(places))] if len(places) else []
    )
    sections.append(_figures(
        "Where", map_fig,
        None if map_fig else "No coordinates: pass --deployments FILE with latitude and longitude.",
    ))  # fmt: skip
    summary.plots = [f[0] for f in figures + diel + rate_fig + map_fig]
    fs.pipe_file(summary.html, _page(results, sections).encode())
    return summary


def _season_sheets(
    results: str, deployments: Deployments, season: Season
) -> Iterator[pd.DataFrame]:
    """Each deployment's spreadsheet rows, in name order, counted into `season` on the way.
    Observations count only with their photo's media row: a reader of a run still writing sees
    whole photos (media is committed last)."""
    media_rows = DeploymentRows(results, "media", MEDIA_COLUMNS)
    observation_rows = DeploymentRows(results, "observations", OBSERVATION_COLUMNS)
    reviews = reviewed_events(results)  # people's reviews: few, read once
    names = media_rows.deployments()
    for deployment_id in names:
        media = _prepared(media_rows.of(deployment_id).to_pandas(), deployments, reviews)
        observations = observation_rows.of(deployment_id).to_pandas()
        observations = observations[observations["media_id"].isin(media["media_id"])]
        item = deployments.get(deployment_id)
        location = (item.location_name or "") if item else ""
        season.add(deployment_id, location, media, observations, _animal_events(media))
        yield photo_sheet(media, observations)
    if not names:  # the columns alone
        media = _prepared(media_rows.of([]).to_pandas(), deployments, reviews)
        yield photo_sheet(media, observation_rows.of([]).to_pandas())


def _prepared(media: pd.DataFrame, deployments: Deployments, reviews: dict) -> pd.DataFrame:
    """Media rows with their local time, reviews, final label and media type."""
    media = _with_local_time(media, deployments)
    media = _with_reviews(media, reviews)
    media["final_label"] = [
        final_label(e if isinstance(e, str) else None, t)
        for e, t in zip(media["event_label"], media["observation_type"])
    ]
    media["is_video"] = media["uri"].str.lower().str.endswith(VIDEO_EXTENSIONS)
    return media


def _with_local_time(media: pd.DataFrame, deployments: Deployments) -> pd.DataFrame:
    """Add `local_time` (naive wall time of the camera's zone) and `zone` (its name)."""
    media = media.copy()
    media["local_time"] = pd.Series(pd.NaT, index=media.index, dtype="datetime64[us]")
    media["zone"] = "UTC"
    for deployment_id, index in media.groupby("deployment_id").groups.items():
        item = deployments.get(str(deployment_id))
        zone = item.tz() if item else None
        stamps = media.loc[index, "timestamp"]
        if zone is not None:
            media.loc[index, "zone"] = item.utc_offset or str(zone)
            stamps = stamps.dt.tz_convert(zone)
        media.loc[index, "local_time"] = stamps.dt.tz_localize(None).astype("datetime64[us]")
    return media


def _with_reviews(media: pd.DataFrame, reviews: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Reviewed events' labels and types replace the machine's (kept in `machine_label`)."""
    media = media.copy()
    media["machine_label"] = [
        final_label(e if isinstance(e, str) else None, t)
        for e, t in zip(media["event_label"], media["observation_type"])
    ]
    media["reviewed_by"] = ""
    media["individuals"] = pd.Series(pd.NA, index=media.index, dtype="Int64")
    found = media["event_id"].map(reviews.get)
    reviewed = found.notna()
    if reviewed.any():
        rows = list(found[reviewed])
        media.loc[reviewed, "event_label"] = [
            r["label"] if r["observation_type"] == "animal" else None for r in rows
        ]
        media.loc[reviewed, "observation_type"] = [r["observation_type"] for r in rows]
        media.loc[reviewed, "reviewed_by"] = [r["reviewer"] for r in rows]
        media.loc[reviewed, "individuals"] = [r["count"] for r in rows]
    return media


def _animal_events(media: pd.DataFrame) -> pd.DataFrame:
    """One row per animal event: deployment, label, local start time."""
    animal = media[media["event_label"].notna() & media["local_time"].notna()]
    if animal.empty:
        return pd.DataFrame(
            {
                "event_id": [],
                "deployment_id": [],
                "label": [],
                "start": pd.Series([], dtype="datetime64[us]"),
            }
        )
    return (
        animal.groupby("event_id")
        .agg(
            deployment_id=("deployment_id", "first"),
            label=("event_label", "first"),
            start=("local_time", "min"),
        )
        .reset_index()
    )


def _places(season: Season, deployments: Deployments) -> pd.DataFrame:
    rows = []
    for d in deployments.values():
        if d.latitude is None or d.longitude is None:
            continue
        found = sorted(season.species_at.get(d.deployment_id, set()))
        rows.append({
            "deployment_id": d.deployment_id, "latitude": d.latitude, "longitude": d.longitude,
            "species_count": len(found), "species": ", ".join(found) or "no species",
        })  # fmt: skip
    return pd.DataFrame(rows)


# ---- HTML ----

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.tiles { display: flex; flex-wrap: wrap; gap: 0.8em; }
.tile { background: #f3f6f3; border-radius: 6px; padding: 0.6em 1em; min-width: 8em; }
.tile b { display: block; font-size: 1.6em; }
table { border-collapse: collapse; font-size: 0.92em; } td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f6f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #666; font-style: italic; } .meta { color: #666; font-size: 0.9em; }
"""


def _page(results: str, sections: list[str]) -> str:
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>Trapline report</title><link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body>"
        f'<h1>Trapline report</h1><p class="meta">{html.escape(results)} &middot; made {made}. '
        'Spreadsheet of every photo: <a href="photos.xlsx">photos.xlsx</a>, '
        '<a href="photos.csv">photos.csv</a>.</p>' + "".join(sections) + "</body></html>\n"
    )


def _overview(s: ReportSummary, season: Season) -> str:
    blank = "-" if s.blank_rate is None else f"{100 * s.blank_rate:.1f} %"
    species = sorted(season.species)
    reviewed = season.reviewed_events
    tiles = [
        ("photos processed", f"{s.media - s.videos:,}"), ("videos processed", f"{s.videos:,}"),
        ("failed inputs", f"{s.failures:,}"), ("blank rate", blank),
        ("detections", f"{season.detections:,}"), ("animal events", f"{season.animal_events:,}"),
        ("species", f"{len(species)}"), ("events reviewed", f"{reviewed:,} of {season.events:,}"),
    ]  # fmt: skip
    body = "".join(f'<div class="tile"><b>{v}</b>{html.escape(k)}</div>' for k, v in tiles)
    types = sorted(season.types.items(), key=lambda item: (-item[1], item[0]))
    kinds = ", ".join(f"{html.escape(k)} {v}" for k, v in types)
    return (
        f'<section id="overview"><h2>Overview</h2><div class="tiles">{body}</div>'
        f"<p>Photos by observation type: {kinds or 'none'}. Species: "
        f"{html.escape(', '.join(species)) or 'none'}.</p>"
        + (
            f'<p id="reviewed">Labels of {reviewed:,} events were checked by people '
            f"({html.escape(', '.join(sorted(season.reviewers)))}); their labels are used "
            "throughout. The rest are the machine's.</p>"
            if reviewed
            else '<p id="reviewed">No event reviewed yet: every label is the machine\'s '
            "(review with <code>trapline review</code>).</p>"
        )
        + "</section>"
    )


def _deployment_table(season: Season) -> str:
    head = ["deployment", "location", "first", "last", "photos", "videos", "blank", "animal",
            "human", "vehicle", "animal events", "species"]  # fmt: skip
    rows = []
    for line in season.lines:
        cells = [
            html.escape(line.deployment_id), html.escape(line.location),
            f"{line.first:%Y-%m-%d}" if line.first is not None else "-",
            f"{line.last:%Y-%m-%d}" if line.last is not None else "-",
        ]  # fmt: skip
        numbers = [
            line.photos, line.videos,
            *(line.types.get(t, 0) for t in ("blank", "animal", "human", "vehicle")),
            line.animal_events,
        ]  # fmt: skip
        rows.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in cells)
            + "".join(f'<td class="n">{n}</td>' for n in numbers)
            + f"<td>{html.escape(', '.join(line.species))}</td></tr>"
        )  # fmt: skip
    table = (
        "<table><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )
    return f'<section id="deployments"><h2>Per deployment</h2>{table if rows else "<p class=note>No media.</p>"}</section>'


def _figures(title: str, figures: list[tuple[str, str, bytes]], note: str | None = None) -> str:
    parts = [f'<section id="{_slug(title)}"><h2>{html.escape(title)}</h2>']
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    parts.append('<div class="figures">')
    for figure_id, caption, png in figures:
        data = base64.b64encode(png).decode()
        parts.append(
            f'<figure id="{figure_id}"><img class="plot" alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"></figure>'
        )
    parts.append("</div></section>")
    return "".join(parts)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
