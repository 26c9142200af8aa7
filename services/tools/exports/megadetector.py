"""MegaDetector batch output (format 1.6) from the result tables, and reading such a file back.

Timelapse and AddaxAI open this format to review detections, so the file keeps to what
MegaDetector's own writer and validator (`megadetector/postprocessing/validate_batch_results.py`)
do: category ids are strings of integers, `conf` is always a float, a processed photo always has
a `detections` list (empty when blank) and a failed one has a `failure` string with
`detections: null`, `bbox` is `[x_min, y_min, width, height]` relative to the photo, classifications
are `[category, probability]` pairs, most probable first. Videos carry `frame_rate` on the file and
`frame_number` on each detection when the tables have those columns.

A detection's classifications are the classifier's top-k, led by the photo's own answer when
post-processing changed it (a rolled-up or geofenced taxon such as 'Cervidae', the photo's
dominant class): the same answer as the Camtrap DP media-level observation of that box
(`answers.photo_answer`), never the event's vote. A box a person reviewed carries the
reviewer's label first, at 1.0 (the format has no field for who decided; who and when are
listed in `info.custom_metadata.reviewed`); one reviewed as blank is left out.

`file` is relative to the folder given to `trapline run` by default, and no path of the
machine that wrote the file appears in it (failure messages name the file as `file` does).

Every media row becomes one entry; every failures row becomes one entry too, unless its file
already has one (a duplicate upload of a processed photo): Timelapse keys its rows by `file`, so
those are listed in `info.custom_metadata.failures_not_listed` instead of silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from trapline.models.labels import DEEPFAUNE_LABELS, DETECTOR_CLASSES
from trapline.services.tools.exports.answers import Answer, photo_answer, run_root
from trapline.services.tools.exports.common import (
    ExportError,
    Results,
    read_results,
    relative_to,
    utc_z,
    write_text,
)
from trapline.services.tools.exports.reviewed import Reviews, read_reviews

FORMAT_VERSION = "1.6"
DETECTION_CATEGORIES = {str(i + 1): name for i, name in enumerate(DETECTOR_CLASSES)}
CATEGORY_IDS = {name: key for key, name in DETECTION_CATEGORIES.items()}
DIGITS = 4  # MegaDetector writes boxes and scores to 4 decimals; more is noise from float32


@dataclass
class MegaDetectorReport:
    """What the export wrote, for the CLI and the tests."""

    out: str
    base: str
    images: int = 0  # entries in `images`
    processed: int = 0  # entries with a detections list (media rows)
    failed: int = 0  # entries with a failure (failures rows)
    detections: int = 0
    reviewed: int = 0  # detections (and photos without one) that carry a person's label
    not_listed: list[dict[str, str]] = field(default_factory=list)  # failures of listed files


def export_megadetector(
    results_root: str,
    out: str,
    base: str | None = None,
    detection_threshold: float | None = None,
    classification_threshold: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
    reviews: bool = True,
) -> MegaDetectorReport:
    """Write the MegaDetector JSON of `results_root` to `out` (local path or fsspec URL).
    `reviews`: people's reviewed labels win over the machine's where there are any."""
    results = read_results(results_root, storage_options)
    document, report = megadetector_document(
        results,
        base,
        detection_threshold,
        classification_threshold,
        read_reviews(results_root) if reviews else None,
    )
    write_text(out, json.dumps(document, indent=1), storage_options)
    report.out = out
    return report


def megadetector_document(
    results: Results,
    base: str | None = None,
    detection_threshold: float | None = None,
    classification_threshold: float | None = None,
    reviews: Reviews | None = None,
) -> tuple[dict[str, Any], MegaDetectorReport]:
    """The document as a dict. `base`: folder the `file` paths are relative to (default: the
    folder given to `trapline run`, `answers.run_root`; '' keeps full paths/URLs)."""
    rows = [*results.media, *results.failures]
    given = base is not None
    base = base.rstrip("/") if base is not None else run_root(rows)
    reviews = reviews or Reviews()
    by_media = results.observations_by_media()
    answers = {
        o["observation_id"]: photo_answer(o, by_media.get(o["media_id"], []))
        for o in results.observations
    }
    labels = _classification_labels(results, answers, reviews)
    label_ids = {label: str(index) for index, label in enumerate(labels)}
    report = MegaDetectorReport(out="", base=base)

    entries: dict[str, dict[str, Any]] = {}
    reviewed: list[dict[str, Any]] = []
    for row in results.media:
        file = relative_to(row["uri"], base)
        if file in entries:
            raise ExportError(
                f"{results.root}: two media rows for {row['uri']} "
                "(the same file processed twice under different media ids?)"
            )
        detections = []
        for obs in by_media.get(row["media_id"], []):
            review = reviews.for_box(obs)
            detection = _detection(obs, label_ids, answers[obs["observation_id"]], review)
            if review is not None:
                reviewed.append(_reviewed_note(file, obs["observation_id"], review, detection))
            if detection is not None:
                detections.append(detection)
        if not by_media.get(row["media_id"]) and row["event_id"] in reviews.events:
            reviewed.append(_reviewed_note(file, None, reviews.events[row["event_id"]], None))
        entry: dict[str, Any] = {"file": file, "detections": detections}
        entry["width"], entry["height"] = row["width"], row["height"]
        if row.get("frame_rate") is not None:  # videos (format >= 1.4 requires it)
            entry["frame_rate"] = float(row["frame_rate"])
        if row.get("frames_processed") is not None:
            entry["frames_processed"] = row["frames_processed"]
        entries[file] = entry
        report.processed += 1
        report.detections += len(detections)
    for row in results.failures:
        file = relative_to(row["uri"], base)
        failure = f"{row['stage']}/{row['kind']}: {_without_paths(row['message'], row['uri'], file, base)}"  # fmt: skip
        if file in entries:
            report.not_listed.append({"file": file, "failure": failure})
            continue
        entries[file] = {"file": file, "failure": failure, "detections": None}
        report.failed += 1

    images = [entries[file] for file in sorted(entries)]
    report.images = len(images)
    report.reviewed = len(reviewed)
    document: dict[str, Any] = {
        "info": _info(
            results, base, given, report, detection_threshold, classification_threshold, reviewed
        ),
        "detection_categories": dict(DETECTION_CATEGORIES),
    }
    if labels:
        document["classification_categories"] = {label_ids[x]: x for x in labels}
    document["images"] = images
    return document, report


def _without_paths(message: str, uri: str, file: str, base: str) -> str:
    """A failure message without the machine's paths: the file as `file` names it."""
    message = message.replace(uri, file)
    if base and not _is_url(base):
        message = message.replace(base.rstrip("/") + "/", "")
    return message


def _is_url(text: str) -> bool:
    return "://" in text


def _classification_labels(
    results: Results, answers: Mapping[str, Answer], reviews: Reviews
) -> list[str]:
    """The classifier's classes in its own order (DeepFaune's), then any other label written:
    the classifier's own beyond DeepFaune's, the higher taxa of roll-up and geofence
    ('Cervidae'), and reviewers' taxa."""
    seen: set[str] = set()
    for row in results.observations:
        seen.update(_classes(row)[0])
    seen.update(a.label for a in answers.values() if a.named and a.label)
    seen.update(
        r["label"]
        for r in [*reviews.events.values(), *reviews.boxes.values()]
        if r["observation_type"] == "animal" and r.get("scientific_name")
    )
    if not seen:
        return []
    return list(DEEPFAUNE_LABELS) + sorted(seen - set(DEEPFAUNE_LABELS))


def _detection(
    row: dict[str, Any],
    label_ids: dict[str, str],
    answer: Answer,
    review: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The box as MegaDetector writes it; None when a reviewer says there is nothing there."""
    category = CATEGORY_IDS[row["category"]]
    pairs = _pairs(row, answer)
    if review is not None:
        kind = review["observation_type"]
        if kind == "blank":
            return None
        category = CATEGORY_IDS[{"animal": "animal", "human": "person", "vehicle": "vehicle"}[kind]]  # fmt: skip
        if kind != "animal" or not review.get("scientific_name"):
            pairs = []
        else:  # the format has no place for who decided: a person's label is certain
            pairs = [(review["label"], 1.0)] + [(x, p) for x, p in pairs if x != review["label"]]
    detection: dict[str, Any] = {
        "category": category,
        "conf": round(float(row["detection_conf"]), DIGITS),
        "bbox": [
            round(float(row[name]), DIGITS)
            for name in ("bbox_x", "bbox_y", "bbox_width", "bbox_height")
        ],
    }
    if pairs:
        detection["classifications"] = [
            [label_ids[label], round(float(p), DIGITS)] for label, p in pairs
        ]
    if row.get("frame_number") is not None:
        detection["frame_number"] = int(row["frame_number"])
    return detection


def _pairs(row: dict[str, Any], answer: Answer) -> list[tuple[str, float]]:
    """(label, probability), most probable first: the classifier's top-k, led by the photo's
    own answer when post-processing changed it (a roll-up, a geofence, the photo's dominant
    class), so the file says what the Camtrap DP media-level observation says. Entries more
    probable than that answer are left out (the format lists most probable first; the
    tables keep them)."""
    classes, probabilities = _classes(row)
    raw = sorted(zip(classes, map(float, probabilities)), key=lambda pair: -pair[1])
    if not answer.named or answer.probability is None or answer.label is None:
        return raw
    if raw and raw[0][0] == answer.label and abs(raw[0][1] - answer.probability) < 1e-6:
        return raw
    first = (answer.label, float(answer.probability))
    return [first] + [(x, p) for x, p in raw if x != answer.label and p <= first[1]]


def _reviewed_note(
    file: str, observation_id: str | None, review: Mapping[str, Any], detection: dict | None
) -> dict[str, Any]:
    """What a reviewer decided, for `info.custom_metadata.reviewed` (the format has no field
    for a person's decision on a detection)."""
    return {
        "file": file,
        "detection": observation_id,
        "target": review["target"],
        "label": review["label"],
        "observation_type": review["observation_type"],
        "reviewer": review["reviewer"],
        "reviewed_at": utc_z(review["reviewed_at"]),
        "written": "removed (blank)" if observation_id and detection is None
        else "no detection to carry it" if observation_id is None
        else "as the detection's category and first classification" if detection and detection.get("classifications")
        else "as the detection's category",
    }  # fmt: skip


def _classes(row: dict[str, Any]) -> tuple[list[str], list[float]]:
    """The classifier's own answers for a box: its top-k, else its single label."""
    if row.get("top_labels"):
        return list(row["top_labels"]), list(row["top_probabilities"] or [])
    label = row.get("classifier_label", row.get("label"))
    if label in (None, "undefined") or row.get("classification_probability") is None:
        return [], []
    return [label], [row["classification_probability"]]


def _info(
    results: Results,
    base: str,
    given: bool,
    report: MegaDetectorReport,
    detection_threshold: float | None,
    classification_threshold: float | None,
    reviewed: list[dict[str, Any]],
) -> dict[str, Any]:
    def one(column: str) -> str:
        values = sorted({str(row[column]) for row in results.media})
        return "+".join(values) if values else "unknown"

    finished = max((row["processed_at"] for row in results.media), default=None)
    when = (finished or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S")
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "detector": one("detector"),
        "detection_completion_time": when,
        "detector_metadata": {"megadetector_version": one("detector_version")},
        "classifier": f"{one('classifier')}/{one('classifier_version')}",
        "classification_completion_time": when,
    }
    if detection_threshold is not None:
        # Detections below it were never kept, so it is also the lowest sensible threshold.
        info["detector_metadata"]["typical_detection_threshold"] = detection_threshold
        info["detector_metadata"]["conservative_detection_threshold"] = detection_threshold
    if classification_threshold is not None:
        info["classifier_metadata"] = {"typical_classification_threshold": classification_threshold}
    # No path of the machine that wrote it: URLs (s3://...) are kept, local folders are not.
    custom: dict[str, Any] = {"producer": "trapline"}
    if _is_url(results.root):
        custom["results"] = results.root
    if _is_url(base):
        custom["base"] = base
    elif base:
        custom["files_relative_to"] = "--base" if given else "the folder given to `trapline run`"
    custom["failures_not_listed"] = report.not_listed
    if reviewed:
        custom["reviewed"] = reviewed
    info["custom_metadata"] = custom
    return info


# ---- reading back ------------------------------------------------------------------------------


def load_megadetector(text: str) -> dict[str, Any]:
    """Parse a MegaDetector batch output file and check it against the format's rules."""
    document = json.loads(text)
    problems = format_problems(document)
    if problems:
        raise ExportError("not a valid MegaDetector batch output file: " + "; ".join(problems))
    return document


def format_problems(document: Any) -> list[str]:
    """The format's rules (as MegaDetector's validator applies them), broken ones listed."""
    if not isinstance(document, dict):
        return ["the file is not a JSON object"]
    problems = [
        f"no {key!r}" for key in ("info", "detection_categories", "images") if key not in document
    ]
    if problems:
        return problems
    if "format_version" not in document["info"]:
        problems.append("info has no format_version")
    for key in ("detection_categories", "classification_categories"):
        for category, name in document.get(key, {}).items():
            if not category.isdigit() or not isinstance(name, str):
                problems.append(
                    f"{key}: {category!r}: {name!r} is not a string integer id and name"
                )
    classes = document.get("classification_categories", {})
    for image in document["images"]:
        file = image.get("file")
        if not isinstance(file, str):
            problems.append(f"an image entry without a file: {image}")
            continue
        if image.get("failure") is not None:
            if not isinstance(image["failure"], str) or image.get("detections") is not None:
                problems.append(f"{file}: a failure needs a string and null detections")
            continue
        if not isinstance(image.get("detections"), list):
            problems.append(f"{file}: processed but without a detections list")
            continue
        for detection in image["detections"]:
            if detection.get("category") not in document["detection_categories"]:
                problems.append(f"{file}: unknown detection category {detection.get('category')!r}")
            if not isinstance(detection.get("conf"), float):
                problems.append(f"{file}: conf {detection.get('conf')!r} is not a float")
            box = detection.get("bbox")
            if not (isinstance(box, list) and len(box) == 4):
                problems.append(f"{file}: bbox {box!r} is not [x, y, width, height]")
            pairs = detection.get("classifications") or []
            if [p for _, p in pairs] != sorted((p for _, p in pairs), reverse=True):
                problems.append(f"{file}: classifications are not most probable first")
            for category, _ in pairs:
                if category not in classes:
                    problems.append(f"{file}: unknown classification category {category!r}")
    return problems
