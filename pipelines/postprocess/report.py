"""The static-detection review: one row per suppressed place, for a human to confirm or overrule.

Static boxes stay in `observations` (`is_static`, `static_group`); this groups them per
deployment and place with the photo count, the period and a few example photos, so a reviewer
can open the examples and, if the "rock" was a badger's sett entrance with a badger in it,
raise `static_min_span_h` or switch `static_enabled` off for that program.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

import pyarrow.compute as pc

from trapline.pipelines.readers import read_table

COLUMNS = (
    "deployment_id", "static_group", "category", "photos", "boxes", "first", "last",
    "bbox_x", "bbox_y", "bbox_width", "bbox_height", "mean_detection_conf",
    "classifier_labels", "examples",
)  # fmt: skip


def static_report(results: str, examples: int = 3) -> list[dict[str, Any]]:
    """Rows for each static place in the results at `results` (path or URL), by deployment."""
    observations = read_table(results, "observations", filter=pc.field("is_static"))
    media = read_table(results, "media", columns=["media_id", "uri"])
    uri_of = dict(zip(media.column("media_id").to_pylist(), media.column("uri").to_pylist()))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in observations.to_pylist():
        groups[row["static_group"]].append(row)
    rows = []
    for group_id, boxes in groups.items():
        boxes.sort(key=lambda b: (b["timestamp"] is None, b["timestamp"] or 0, b["media_id"]))
        times = [b["timestamp"] for b in boxes if b["timestamp"] is not None]
        photos = list(dict.fromkeys(b["media_id"] for b in boxes))
        labels: dict[str, int] = defaultdict(int)
        for b in boxes:
            labels[b["classifier_label"] or "-"] += 1
        rows.append({
            "deployment_id": boxes[0]["deployment_id"], "static_group": group_id,
            "category": boxes[0]["category"], "photos": len(photos), "boxes": len(boxes),
            "first": min(times).isoformat() if times else None,
            "last": max(times).isoformat() if times else None,
            **{k: round(sum(b[k] for b in boxes) / len(boxes), 4)
               for k in ("bbox_x", "bbox_y", "bbox_width", "bbox_height")},
            "mean_detection_conf": round(sum(b["detection_conf"] for b in boxes) / len(boxes), 3),
            "classifier_labels": " ".join(f"{k}:{v}" for k, v in sorted(labels.items(), key=lambda i: -i[1])),
            "examples": " ".join(uri_of.get(m, m) for m in _spread(photos, examples)),
        })  # fmt: skip
    rows.sort(key=lambda r: (r["deployment_id"], -r["photos"]))
    return rows


def _spread(items: list[str], count: int) -> list[str]:
    """First, last and evenly spaced ones between: examples from the whole period."""
    if len(items) <= count:
        return items
    step = (len(items) - 1) / (count - 1) if count > 1 else 0
    return [items[round(i * step)] for i in range(count)]


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
