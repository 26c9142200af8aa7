"""Write a small folder of synthetic camera-trap photos with known answers.

`trapline run examples/photos/` needs something to chew on that anyone may ship and that
exercises what real camera-trap cards contain: two deployments, bursts of 2-4 frames a second
or two apart (DeepFaune's sequence rule), day and infrared night frames, blank triggers, a
person, a vehicle, a photo stored rotated with an EXIF Orientation tag, and a truncated JPEG.
`ground_truth.csv` says what each file shows, so examples, docs and end-to-end tests can check
the pipeline's tables against it.

    python -m trapline.models.demo.sample examples/photos
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from trapline.models.demo.synthetic import render_scene

MAKE, MODEL = "TraplineSynth", "SC-1"
EXIF_IFD, DATETIME_ORIGINAL, ORIENTATION = 0x8769, 0x9003, 0x0112
CSV_COLUMNS = (
    "file", "deployment_id", "kind", "species", "timestamp", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
)  # fmt: skip


@dataclass(frozen=True)
class _Sequence:
    kind: str  # blank | animal | person | vehicle
    species: str | None
    night: bool
    frames: int


# Per deployment, in time order. Every demo species appears at least once.
_PLAN: dict[str, tuple[datetime, tuple[_Sequence, ...]]] = {
    "deployment-a": (
        datetime(2024, 5, 3, 6, 40),
        (
            _Sequence("animal", "red deer", False, 3),
            _Sequence("animal", "roe deer", True, 3),
            _Sequence("animal", "fox", True, 2),
            _Sequence("blank", None, False, 2),
            _Sequence("animal", "wild boar", True, 4),
            _Sequence("person", None, False, 2),
            _Sequence("animal", "lynx", False, 3),
        ),
    ),
    "deployment-b": (
        datetime(2024, 5, 4, 5, 10),
        (
            _Sequence("animal", "badger", True, 3),
            _Sequence("animal", "chamois", False, 3),
            _Sequence("vehicle", None, False, 2),
            _Sequence("animal", "roe deer", False, 3),
            _Sequence("blank", None, True, 2),
            _Sequence("animal", "lagomorph", True, 2),
            _Sequence("animal", "fox", False, 2),
        ),
    ),
}
_ROTATED = ("deployment-b", 5)  # (deployment, frame index): stored with EXIF Orientation 6


def _is_night(t: datetime) -> bool:
    return t.hour >= 21 or t.hour < 5


def _next_start(rng: np.random.Generator, after: datetime, night: bool) -> datetime:
    """A time minutes to hours after `after` that falls in the wanted half of the day."""
    t = after + timedelta(minutes=int(rng.integers(6, 180)))
    while _is_night(t) != night or (not night and not 7 <= t.hour < 19):
        t += timedelta(minutes=int(rng.integers(20, 90)))
    return t


def _exif(timestamp: datetime, orientation: int | None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = MAKE
    exif[0x0110] = MODEL
    exif[0x0132] = timestamp.strftime("%Y:%m:%d %H:%M:%S")  # DateTime (IFD0)
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = timestamp.strftime("%Y:%m:%d %H:%M:%S")
    return exif.tobytes()


def _jpeg(
    img: Image.Image, timestamp: datetime, quality: int, orientation: int | None = None
) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, exif=_exif(timestamp, orientation), optimize=True)
    return buf.getvalue()


def write_sample_photos(
    out_dir: Path, *, seed: int = 7, width: int = 1280, height: int = 960, quality: int = 85
) -> list[dict]:
    """Write the sample folder and `ground_truth.csv`; returns the ground-truth rows.

    Boxes are relative (x, y, width, height) in the upright frame, i.e. after applying EXIF
    Orientation. The same seed writes the same bytes.
    """
    out_dir = Path(out_dir)
    rows: list[dict] = []
    for d_index, (deployment, (start, sequences)) in enumerate(_PLAN.items()):
        folder = out_dir / deployment
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, d_index])
        t = start
        frame_no = 0
        for s_index, seq in enumerate(sequences):
            t = _next_start(rng, t, seq.night)
            site_seed = [seed, d_index, s_index]  # one background per burst
            for _ in range(seq.frames):
                frame_rng = np.random.default_rng([seed, d_index, s_index, frame_no])
                img, boxes = render_scene(
                    frame_rng, width, height, seq.kind, species=seq.species, night=seq.night,
                    scene_rng=np.random.default_rng(site_seed),
                )  # fmt: skip
                name = f"IMG_{frame_no + 1:04d}.jpg"
                orientation = None
                if (deployment, frame_no) == _ROTATED:
                    # Stored turned 90 degrees counter-clockwise; Orientation 6 tells viewers
                    # to turn it clockwise, which restores the upright scene.
                    img, orientation = img.transpose(Image.Transpose.ROTATE_90), 6
                (folder / name).write_bytes(_jpeg(img, t, quality, orientation))
                box = boxes[0].bbox if boxes else None
                rows.append(
                    {
                        "file": f"{deployment}/{name}",
                        "deployment_id": deployment,
                        "kind": seq.kind,
                        "species": seq.species or "",
                        "timestamp": t.isoformat(),
                        "bbox_x": "" if box is None else round(box[0], 5),
                        "bbox_y": "" if box is None else round(box[1], 5),
                        "bbox_w": "" if box is None else round(box[2], 5),
                        "bbox_h": "" if box is None else round(box[3], 5),
                    }
                )
                frame_no += 1
                t += timedelta(seconds=int(rng.integers(1, 3)))
        if deployment == "deployment-b":
            # A card error: a valid JPEG cut off at 40 % of its bytes.
            t = _next_start(rng, t, False)
            img, _ = render_scene(
                np.random.default_rng([seed, d_index, 99]), width, height, "animal", "fox"
            )
            data = _jpeg(img, t, quality)
            (folder / "corrupt.jpg").write_bytes(data[: int(len(data) * 0.4)])
            rows.append(
                {"file": f"{deployment}/corrupt.jpg", "deployment_id": deployment, "kind": "corrupt",
                 "species": "", "timestamp": t.isoformat(),
                 "bbox_x": "", "bbox_y": "", "bbox_w": "", "bbox_h": ""}
            )  # fmt: skip
    with open(out_dir.parent / "ground_truth.csv", "w", newline="") as fh:  # beside the photos: not an input
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m trapline.models.demo.sample OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    rows = write_sample_photos(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(rows)} photos and ground_truth.csv to {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
