"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

Each function takes counts or small pandas frames the report module prepared and returns one PNG, so the
HTML page can embed it as a `data:` URI and open offline. Figures are small (about 100 dpi) to
keep the page light; text uses matplotlib's bundled DejaVu fonts, so nothing depends on the
fonts of the machine that opens the page.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # no display; must come before pyplot is imported

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# Labels, deployment names and taxa come from people (a reviewer's typed label, a program's
# deployment name): never parse them as mathtext. A '$\undefinedmacro$' label in a chart
# title failed the whole season's report (issue 37).
matplotlib.rcParams["text.parse_math"] = False

CATEGORY_COLOURS = {"animal": "#2e7d32", "person": "#c62828", "vehicle": "#1565c0"}
DPI = 100


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def detections_per_class(categories: Mapping[str, int], labels: Mapping[str, int]) -> bytes:
    """Detections per MegaDetector category (left) and per classifier label (right), from
    their counts."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), width_ratios=[1, 2])
    counts = pd.Series(categories, dtype=int).reindex(["animal", "person", "vehicle"], fill_value=0)
    left.bar(counts.index, counts.values, color=[CATEGORY_COLOURS[c] for c in counts.index])
    left.set_title("detections per category")
    left.set_ylabel("detections")
    # most at the top, ties in name order (barh draws its first bar at the bottom)
    by_label = sorted(sorted(labels.items(), reverse=True), key=lambda item: item[1])
    if not by_label:
        right.text(0.5, 0.5, "no classified animal", ha="center", va="center")
        right.set_axis_off()
    else:
        right.barh(
            [k for k, _ in by_label], [v for _, v in by_label], color=CATEGORY_COLOURS["animal"]
        )
        right.set_title("animal detections per label")
        right.set_xlabel("detections")
    return _png(fig)


def diel_activity(species: str, hours: Mapping[int, int], zone_note: str) -> bytes:
    """Events per hour of the day (local time) for one species, from their counts (hour ->
    events); night hours shaded."""
    counts = pd.Series(hours, dtype=int).reindex(range(24), fill_value=0)
    events = int(counts.sum())
    fig, ax = plt.subplots(figsize=(4.2, 2.4))
    ax.axvspan(-0.5, 5.5, color="#000000", alpha=0.07, lw=0)
    ax.axvspan(20.5, 23.5, color="#000000", alpha=0.07, lw=0)
    ax.bar(counts.index, counts.values, width=0.85, color=CATEGORY_COLOURS["animal"])
    ax.set_xlim(-0.5, 23.5)
    ax.set_xticks(range(0, 24, 3))
    ax.set_xlabel(f"hour of day ({zone_note})")
    ax.set_ylabel("events")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"{species} (n = {events} event{'' if events == 1 else 's'})")
    return _png(fig)


def detection_rate(rate: pd.DataFrame, unit: str) -> bytes:
    """Animal events per `unit` (day or week), one line per deployment (columns of `rate`)."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for deployment in rate.columns:
        ax.plot(rate.index, rate[deployment], marker="o", ms=3, label=deployment)
    ax.set_ylabel(f"animal events per {unit}")
    ax.set_title(f"detection rate per deployment (animal events per {unit})")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    locator = mdates.AutoDateLocator(minticks=3, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    return _png(fig)


def deployment_map(places: pd.DataFrame) -> bytes:
    """Deployments at their coordinates; marker size and colour = species detected there.

    A plain longitude/latitude scatter (equirectangular), not a basemap: a map of tiles would
    need the network, and the page must open offline.
    """
    fig, ax = plt.subplots(figsize=(6, 4.2))
    sizes = 60 + 60 * places["species_count"]
    points = ax.scatter(
        places["longitude"], places["latitude"], s=sizes, c=places["species_count"],
        cmap="viridis", edgecolors="black", vmin=0,
    )  # fmt: skip
    for row in places.itertuples():
        ax.annotate(
            f"{row.deployment_id}\n{row.species}", (row.longitude, row.latitude),
            textcoords="offset points", xytext=(8, 6), fontsize=7,
        )  # fmt: skip
    fig.colorbar(points, ax=ax, label="species detected")
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.set_title("deployments and species presence")
    ax.margins(0.3)
    ax.set_aspect("equal", adjustable="datalim")
    return _png(fig)
