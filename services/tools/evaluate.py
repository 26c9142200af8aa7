"""Score a run against ground truth: detector recall and classifier accuracy.

The sample photos are synthetic and come with their true boxes, so `trapline evaluate` shows
whether the whole route (decode, letterbox, detect, NMS, crop, classify, sequences) is right,
not only whether it runs.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from trapline.pipelines.readers import read_table


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def evaluate_run(results: str, truth_csv: Path, min_iou: float = 0.5) -> dict:
    media = read_table(results, "media").to_pylist()
    observations = read_table(results, "observations").to_pylist()
    failures = read_table(results, "failures").to_pylist()
    events = {e["event_id"]: e for e in read_table(results, "events").to_pylist()}
    boxes_of = defaultdict(list)
    for row in observations:
        boxes_of[row["media_id"]].append(row)

    def by_file(rows: list[dict]) -> dict[str, dict]:
        return {row["uri"].replace("\\", "/"): row for row in rows}

    media_by_uri, failed_by_uri = by_file(media), by_file(failures)
    truth = list(csv.DictReader(truth_csv.open()))
    objects = matched = species_total = species_right = event_right = 0
    blank_total = blank_right = failed_expected = failed_right = 0
    misses = []
    for row in truth:

        def find(table: dict[str, dict], file: str = row["file"]) -> dict | None:
            return next((v for k, v in table.items() if k.endswith("/" + file)), None)

        if row["kind"] == "corrupt":
            failed_expected += 1
            failed_right += find(failed_by_uri) is not None
            continue
        photo = find(media_by_uri)
        if row["kind"] == "blank":
            blank_total += 1
            blank_right += photo is not None and photo["observation_type"] == "blank"
            continue
        objects += 1
        true_box = tuple(float(row[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        category = {"animal": "animal", "person": "person", "vehicle": "vehicle"}[row["kind"]]
        hit = None
        if photo is not None:
            candidates = [
                o for o in boxes_of[photo["media_id"]]
                if o["category"] == category
                and _iou(true_box, (o["bbox_x"], o["bbox_y"], o["bbox_width"], o["bbox_height"])) >= min_iou
            ]  # fmt: skip
            hit = max(candidates, key=lambda o: o["detection_conf"], default=None)
        if hit is None:
            misses.append(row["file"])
            continue
        matched += 1
        if category == "animal":
            species_total += 1
            species_right += hit["label"] == row["species"]
            event_right += events[photo["event_id"]]["label"] == row["species"]
    return {
        "photos_in_truth": len(truth),
        "detector_recall": round(matched / objects, 4) if objects else None,
        "classifier_accuracy": round(species_right / species_total, 4) if species_total else None,
        "event_label_accuracy": round(event_right / species_total, 4) if species_total else None,
        "blank_accuracy": round(blank_right / blank_total, 4) if blank_total else None,
        "corrupt_files_in_failures": f"{failed_right}/{failed_expected}",
        "missed_objects": misses,
    }
