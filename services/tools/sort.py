"""`trapline sort`: arrange the processed photos in one folder per final label.

People who review camera-trap results by hand want folders: `fox/`, `blank/`, `human/`. The
final label of a photo is
  0. its event's reviewed label when a person reviewed the event (`trapline review`; the
     latest review wins): a taxon, or blank / human / vehicle;
  1. else its event's label (`media.event_label`) when the photo belongs to an animal event: a
     species, or `undefined` when the sequence vote was below the threshold;
  2. else its own `media.observation_type`: `blank`, `human` or `vehicle`;
  3. else `undefined`.
A photo of an animal event is sorted with its event even when it shows no animal itself (the
last frame of a burst): ecologists count events, and a burst stays together.

Layout: `INTO/<label>/<deployment_id>/<file name>`, label spaces made `_` (`red_deer/`), so the
same file name from two cameras never collides. Nothing is ever overwritten: a destination that
already holds the same bytes (a re-run) is `already`; one that holds other bytes gets the
photo under `<stem>~<sha256[:8]><ext>` beside it. Each source's bytes are checked against
`media.sha256` first, so a file changed since it was processed is not filed under a stale label.
Every run that writes leaves `INTO/_sort_logs/sort-<UTC time>.csv` (one row per photo: what was
done, from where to where, and why not); `--dry-run` writes nothing and only reports the plan.

Privacy (`--blur-people`, copy mode): a photo with person detections is written as a copy with
every person box blurred (pixelated, then Gaussian blur, boxes grown by 10 %); the original is
not copied. Crops of people are never written. Videos with people cannot be blurred here and
are not copied with that option (their row says why).
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import fsspec
import pyarrow.compute as pc
from PIL import Image, ImageFilter, ImageOps

from trapline.pipelines.readers import read_table
from trapline.pipelines.reviews import reviewed_events, reviewed_final_label
from trapline.services.tools.cells import neutralised

Mode = Literal["copy", "move", "link"]
LOG_FOLDER = "_sort_logs"  # `_` prefix: table readers and our own listing skip it
BLUR_MARK = "trapline-blurred sha256="  # in the JPEG comment / PNG text of a blurred copy
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov")


@dataclass(slots=True)
class SortItem:
    """One photo's line in the plan and in the log."""

    media_id: str
    label: str
    source: str
    destination: str
    action: str  # copy | move | link | blur
    status: str = "planned"  # planned | done | already | failed
    message: str = ""
    reviewed_by: str = ""  # who reviewed the photo's event; empty: the machine's label


@dataclass(slots=True)
class SortReport:
    items: list[SortItem]
    into: str
    dry_run: bool
    log: str | None = None  # the log file written, None on a dry run
    folders: Counter = field(default_factory=Counter)  # photos per label folder

    @property
    def statuses(self) -> Counter:
        return Counter(item.status for item in self.items)


def final_label(event_label: str | None, observation_type: str | None) -> str:
    """The folder a photo belongs in (the rule in the module docstring)."""
    if event_label:
        return event_label
    if observation_type in ("blank", "human", "vehicle"):
        return observation_type
    return "undefined"


def folder_name(label: str) -> str:
    """A label as a folder name: spaces to `_`, anything unsafe in a path to `-`."""
    name = re.sub(r"[^\w.-]+", "-", label.strip().replace(" ", "_")).strip(".-")
    return name or "undefined"


def sort_results(
    results: str,
    into: str,
    mode: Mode = "copy",
    *,
    dry_run: bool = False,
    blur_people: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> SortReport:
    """Copy, move or link every photo in `results`' media table into `into`/<label>/...."""
    if mode not in ("copy", "move", "link"):
        raise ValueError(f"mode must be copy, move or link, not {mode!r}")
    if blur_people and mode != "copy":
        raise ValueError("--blur-people writes blurred copies: use it with --copy")
    media = read_table(
        results,
        "media",
        columns=[
            "media_id",
            "deployment_id",
            "event_id",
            "uri",
            "sha256",
            "observation_type",
            "event_label",
            "person_count",
        ],
    ).to_pylist()
    people = _person_boxes(results, storage_options) if blur_people else {}
    reviews = reviewed_events(results)
    out_fs, out_root = fsspec.core.url_to_fs(into, **(storage_options or {}))
    out_root = out_root.rstrip("/")
    if mode == "link" and not _is_local(out_fs):
        raise ValueError(f"--link needs a local destination folder, not {into}")
    report = SortReport([], into, dry_run)
    for row in sorted(media, key=lambda r: (r["deployment_id"], r["uri"])):
        review = reviews.get(row["event_id"])
        if review is not None:
            label = reviewed_final_label(review)
        else:
            label = final_label(row["event_label"], row["observation_type"])
        name = posixpath.basename(row["uri"].rstrip("/"))
        folder = f"{folder_name(label)}/{folder_name(row['deployment_id'])}"
        blur = blur_people and row["person_count"] > 0
        item = SortItem(
            media_id=row["media_id"],
            label=label,
            source=row["uri"],
            destination=f"{out_root}/{folder}/{name}",
            action="blur" if blur else mode,
            reviewed_by=review["reviewer"] if review else "",
        )
        report.items.append(item)
        report.folders[folder_name(label)] += 1
        if dry_run:
            continue
        try:
            _place(item, row["sha256"], out_fs, people.get(row["media_id"], []), storage_options)
        except Exception as error:  # noqa: BLE001 - one photo's failure is its log row, not the run's
            item.status, item.message = "failed", f"{type(error).__name__}: {error}"
    if not dry_run:
        report.log = _write_log(report, out_fs, out_root)
    return report


def _person_boxes(results: str, storage_options: dict[str, Any] | None) -> dict[str, list]:
    """media_id -> relative person boxes (x, y, w, h), from the observations table."""
    obs = read_table(
        results,
        "observations",
        columns=["media_id", "category", "bbox_x", "bbox_y", "bbox_width", "bbox_height"],
    )
    obs = obs.filter(pc.equal(obs["category"], "person"))
    boxes: dict[str, list] = {}
    for r in obs.to_pylist():
        boxes.setdefault(r["media_id"], []).append(
            (r["bbox_x"], r["bbox_y"], r["bbox_width"], r["bbox_height"])
        )
    return boxes


def _place(
    item: SortItem,
    sha256: str,
    out_fs: Any,
    person_boxes: list,
    storage_options: dict[str, Any] | None,
) -> None:
    """Write one photo (or find it already there); sets the item's status and destination."""
    src_fs, src_path = fsspec.core.url_to_fs(item.source, **(storage_options or {}))
    if item.action == "blur" and item.source.lower().endswith(VIDEO_EXTENSIONS):
        item.status = "failed"
        item.message = "video with people: cannot blur videos, not copied (--blur-people)"
        return
    candidates = [item.destination, _suffixed(item.destination, sha256)]
    for destination in candidates:
        if not out_fs.exists(destination):
            break
        if _holds(out_fs, destination, sha256, item.action, src_path):
            item.destination, item.status = destination, "already"
            item.message = "already sorted (same bytes)"
            return
    else:
        item.status = "failed"
        item.message = f"{item.destination} and {candidates[1]} hold other files; not overwritten"
        return
    item.destination = destination
    if not src_fs.exists(src_path):
        item.status, item.message = "failed", "source missing (moved or deleted since the run)"
        return
    data = src_fs.cat_file(src_path)
    if hashlib.sha256(data).hexdigest() != sha256:
        item.status = "failed"
        item.message = "source changed since it was processed (sha256 differs); re-run trapline run"
        return
    out_fs.makedirs(posixpath.dirname(destination), exist_ok=True)
    if item.action == "link":
        import os

        os.symlink(src_path, destination)
    elif item.action == "blur":
        _write_new(out_fs, destination, blur_boxes(data, person_boxes, sha256))
        item.message = f"{len(person_boxes)} person box(es) blurred"
    else:
        _write_new(out_fs, destination, data)
        if item.action == "move":
            src_fs.rm(src_path)
    item.status = "done"


def _suffixed(path: str, sha256: str) -> str:
    stem, ext = posixpath.splitext(path)
    return f"{stem}~{sha256[:8]}{ext}"


def _holds(fs: Any, path: str, sha256: str, action: str, src_path: str) -> bool:
    """Does `path` already hold this photo (a re-run), as this action would have left it?"""
    if action == "link":
        import os

        return os.path.islink(path) and os.readlink(path) == src_path
    data = fs.cat_file(path)
    if action == "blur":
        return blurred_source(data) == sha256
    return hashlib.sha256(data).hexdigest() == sha256


def _write_new(fs: Any, path: str, data: bytes) -> None:
    """Create `path`, never replacing a file: O_EXCL on local disk; check-then-put elsewhere."""
    if _is_local(fs):
        with open(path, "xb") as handle:
            handle.write(data)
        return
    if fs.exists(path):  # object stores: not atomic, but sort is one process per destination
        raise FileExistsError(f"{path} appeared while sorting; not overwritten")
    fs.pipe_file(path, data)


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def blur_boxes(data: bytes, boxes: list, source_sha256: str) -> bytes:
    """The photo, upright, with each relative (x, y, w, h) box pixelated and blurred.

    Boxes are relative to the upright photo (EXIF orientation applied), as the detector's are;
    the output is upright with no orientation tag. The source's sha256 goes into the file's
    comment so a re-run recognises its own blurred copy.
    """
    with Image.open(io.BytesIO(data)) as opened:
        fmt = opened.format or "JPEG"
        image = ImageOps.exif_transpose(opened).convert("RGB")
    blur_regions(image, boxes)
    out = io.BytesIO()
    mark = f"{BLUR_MARK}{source_sha256}"
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Comment", mark)
        image.save(out, "PNG", pnginfo=info)
    else:
        image.save(out, "JPEG", quality=92, comment=mark.encode())
    return out.getvalue()


def blurred_source(data: bytes) -> str | None:
    """The source sha256 recorded in a blurred copy, or None if `data` is not one of ours."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            comment = image.info.get("comment") or image.info.get("Comment") or b""
    except Exception:  # noqa: BLE001 - not an image: not ours
        return None
    text = comment.decode(errors="replace") if isinstance(comment, bytes) else str(comment)
    return text[len(BLUR_MARK) :] if text.startswith(BLUR_MARK) else None


def _write_log(report: SortReport, fs: Any, root: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = f"{root}/{LOG_FOLDER}/sort-{stamp}.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["media_id", "label", "action", "status", "source", "destination", "message", "reviewed_by"]
    )
    for i in report.items:
        writer.writerow(
            neutralised(v) for v in (i.media_id, i.label, i.action, i.status, i.source,
                                     i.destination, i.message, i.reviewed_by)
        )  # fmt: skip
    fs.makedirs(f"{root}/{LOG_FOLDER}", exist_ok=True)
    fs.pipe_file(path, buffer.getvalue().encode())
    return path


def blur_regions(image: Image.Image, boxes: Sequence[Sequence[float]]) -> None:
    """Pixelate and blur each box (relative x, y, width, height), grown by a tenth, in place:
    the one blur of people's boxes (sort's copies and the review screen's photos)."""
    width, height = image.size
    for x, y, w, h in boxes:
        grow_w, grow_h = 0.1 * w * width, 0.1 * h * height
        left = max(0, int(x * width - grow_w))
        top = max(0, int(y * height - grow_h))
        right = min(width, int((x + w) * width + grow_w) + 1)
        bottom = min(height, int((y + h) * height + grow_h) + 1)
        if right <= left or bottom <= top:
            continue
        region = image.crop((left, top, right, bottom))
        small = region.resize(
            (max(1, region.width // 16), max(1, region.height // 16)), Image.Resampling.BOX
        )
        region = small.resize(region.size, Image.Resampling.NEAREST)
        radius = max(4.0, 0.05 * max(region.size))
        image.paste(region.filter(ImageFilter.GaussianBlur(radius)), (left, top))
