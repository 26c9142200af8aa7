"""`trapline sort` on the bundled sample: one folder per final label, nothing overwritten.

The results come from a real in-process run of the demo models on a copy of `examples/photos`
(a copy, because `--move` removes its sources).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from trapline.pipelines.readers import read_table
from trapline.services.cli.main import app
from trapline.services.run.folder import run_folder
from trapline.services.settings import Settings
from trapline.services.tools.sort import (
    LOG_FOLDER,
    blurred_source,
    final_label,
    folder_name,
    sort_results,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "photos"
DEPLOYMENTS = ROOT / "examples" / "deployments.csv"


def processed_copy(base: Path) -> tuple[Path, Path]:
    """Copy the sample photos under `base` and run the pipeline on the copy."""
    photos, results = base / "photos", base / "results"
    shutil.copytree(SAMPLE, photos)
    settings = Settings(workers=0, deployments_file=str(DEPLOYMENTS))
    run_folder(str(photos), str(results), settings)
    return photos, results


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    return processed_copy(tmp_path_factory.mktemp("sort"))


def sorted_files(into: Path) -> list[Path]:
    return [
        p for p in into.rglob("*") if (p.is_file() or p.is_symlink()) and LOG_FOLDER not in p.parts
    ]


def expected_folders(results: Path) -> dict[str, str]:
    """media uri -> label folder, by the documented rule, from the media table itself."""
    media = read_table(str(results), "media").to_pylist()
    return {
        r["uri"]: folder_name(final_label(r["event_label"], r["observation_type"])) for r in media
    }


def test_final_label_rule():
    assert final_label("red deer", "animal") == "red deer"
    assert final_label("wild boar", "vehicle") == "wild boar"  # the burst stays with its event
    assert final_label("undefined", "animal") == "undefined"
    assert [final_label(None, t) for t in ("blank", "human", "vehicle")] == [
        "blank",
        "human",
        "vehicle",
    ]
    assert final_label(None, "animal") == "undefined"
    assert folder_name("red deer") == "red_deer" and folder_name("../x y") == "x_y"


def test_every_photo_lands_in_exactly_one_folder_matching_its_label(sample, tmp_path):
    photos, results = sample
    into = tmp_path / "sorted"
    report = sort_results(str(results), str(into))
    expected = expected_folders(results)
    files = sorted_files(into)
    assert report.statuses == {"done": len(expected)}
    assert len(files) == len(expected) == 36  # the sample's 36 good photos; corrupt.jpg failed
    by_name: dict[tuple[str, str], list[Path]] = {}
    for f in files:
        by_name.setdefault((f.parent.name, f.name), []).append(f)
    for uri, folder in expected.items():
        source = Path(uri)
        placed = by_name[(source.parent.name, source.name)]
        assert len(placed) == 1, f"{uri} is in {placed}"
        assert placed[0].parent.parent.name == folder
        assert placed[0].read_bytes() == source.read_bytes()
    assert {p.name for p in into.iterdir()} - {LOG_FOLDER} == set(expected.values())
    assert {"blank", "human", "vehicle"} <= set(expected.values())  # the sample has all three
    log = Path(report.log).read_text().splitlines()
    assert len(log) == 1 + len(expected) and log[0].startswith("media_id,label,action,status")


def test_a_rerun_changes_nothing_and_says_already(sample, tmp_path):
    _, results = sample
    into = tmp_path / "sorted"
    sort_results(str(results), str(into))
    before = {p: p.stat().st_mtime_ns for p in sorted_files(into)}
    again = sort_results(str(results), str(into))
    assert again.statuses == {"already": len(before)}
    assert {p: p.stat().st_mtime_ns for p in sorted_files(into)} == before
    assert len(list((into / LOG_FOLDER).iterdir())) == 2  # one log per run


def test_never_overwrites_a_different_file_at_the_destination(sample, tmp_path):
    _, results = sample
    into = tmp_path / "sorted"
    squatter = into / "fox" / "deployment-b" / "IMG_0016.jpg"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's file")
    report = sort_results(str(results), str(into))
    assert squatter.read_bytes() == b"someone else's file"
    item = next(i for i in report.items if i.source.endswith("deployment-b/IMG_0016.jpg"))
    assert item.status == "done" and Path(item.destination).name.startswith("IMG_0016~")
    assert Path(item.destination).read_bytes() == Path(item.source).read_bytes()
    assert sort_results(str(results), str(into)).statuses == {"already": 36}


def test_dry_run_writes_nothing(sample, tmp_path):
    _, results = sample
    into = tmp_path / "sorted"
    result = CliRunner().invoke(app, ["sort", str(results), "--into", str(into), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not into.exists()
    assert result.output.count(" -> ") == 36 and "planned 36" in result.output


def test_link_mode_makes_symlinks_to_the_photos(sample, tmp_path):
    _, results = sample
    into = tmp_path / "sorted"
    assert sort_results(str(results), str(into), "link").statuses == {"done": 36}
    links = sorted_files(into)
    assert all(p.is_symlink() and p.resolve().is_file() for p in links)
    assert sort_results(str(results), str(into), "link").statuses == {"already": 36}


def test_move_mode_moves_and_a_rerun_is_safe(tmp_path):
    photos, results = processed_copy(tmp_path)
    into = tmp_path / "sorted"
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("IMG_*.jpg")}
    assert sort_results(str(results), str(into), "move").statuses == {"done": 36}
    assert not list(photos.rglob("IMG_*.jpg"))  # the sources are gone...
    moved = sorted_files(into)
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in moved} == hashes  # ...all here
    assert sort_results(str(results), str(into), "move").statuses == {"already": 36}


def test_a_photo_changed_since_processing_is_not_filed(tmp_path):
    photos, results = processed_copy(tmp_path)
    changed = photos / "deployment-a" / "IMG_0001.jpg"
    changed.write_bytes(changed.read_bytes() + b"\0")
    report = sort_results(str(results), str(tmp_path / "sorted"))
    item = next(i for i in report.items if i.source == str(changed))
    assert item.status == "failed" and "sha256 differs" in item.message
    assert report.statuses == {"done": 35, "failed": 1}


def test_blur_people_blurs_person_boxes_and_writes_no_crops(sample, tmp_path):
    _, results = sample
    into = tmp_path / "sorted"
    report = sort_results(str(results), str(into), blur_people=True)
    assert len(sorted_files(into)) == 36  # one file per photo: no crops, no extra copies
    people = read_table(str(results), "observations").to_pandas()
    people = people[people.category == "person"]
    blurred = [i for i in report.items if i.action == "blur"]
    assert blurred and {i.media_id for i in blurred} == set(people.media_id)
    for item in blurred:
        original = np.asarray(Image.open(item.source).convert("RGB"), dtype=np.int16)
        written = Path(item.destination).read_bytes()
        assert blurred_source(written) == hashlib.sha256(Path(item.source).read_bytes()).hexdigest()
        copy = np.asarray(Image.open(item.destination).convert("RGB"), dtype=np.int16)
        h, w = original.shape[:2]
        box = people[people.media_id == item.media_id].iloc[0]
        x0, y0 = int(box.bbox_x * w), int(box.bbox_y * h)
        x1, y1 = int((box.bbox_x + box.bbox_width) * w), int((box.bbox_y + box.bbox_height) * h)
        inside = np.abs(copy[y0:y1, x0:x1] - original[y0:y1, x0:x1]).mean()
        mask = np.ones((h, w), bool)
        mask[max(0, y0 - h // 5) : y1 + h // 5, max(0, x0 - w // 5) : x1 + w // 5] = False
        outside = np.abs(copy[mask] - original[mask]).mean()
        # the sample's people are synthetic shapes: blurring changes them a lot, the rest only
        # by JPEG re-encoding noise
        assert inside > 3 * outside and outside < 3, (inside, outside)
    assert sort_results(str(results), str(into), blur_people=True).statuses == {"already": 36}


def test_blur_people_needs_copy_mode(sample, tmp_path):
    _, results = sample
    with pytest.raises(ValueError, match="--copy"):
        sort_results(str(results), str(tmp_path / "s"), "move", blur_people=True)


def test_sorts_into_an_fsspec_url(sample):
    _, results = sample
    into = "memory://trapline-sort-test/sorted"
    report = sort_results(str(results), into)
    fs = fsspec.filesystem("memory")
    files = [p for p in fs.find("/trapline-sort-test/sorted") if f"/{LOG_FOLDER}/" not in p]
    assert report.statuses == {"done": 36} and len(files) == 36
    folders = {p.split("/")[3] for p in files}
    assert folders == set(expected_folders(results).values())
    assert sort_results(str(results), into).statuses == {"already": 36}
    fs.rm("/trapline-sort-test", recursive=True)
