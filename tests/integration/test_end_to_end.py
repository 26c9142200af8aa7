"""The whole route on the bundled sample: photos in, four tables out, nothing lost.

Runs the real demo models on `examples/photos` once in-process and once on a local Ray with two
workers (what `trapline run` does by default) and checks the tables against the sample's
ground truth.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from trapline.pipelines import delta
from trapline.services.run.folder import run_folder
from trapline.services.settings import Settings
from trapline.services.tools.evaluate import evaluate_run

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "photos"
TRUTH = ROOT / "examples" / "ground_truth.csv"


def sample_files() -> list[Path]:
    return [p for p in SAMPLE.rglob("*") if p.is_file() and not p.name.startswith(".")]


@pytest.fixture(scope="module")
def in_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    summary = run_folder(str(SAMPLE), str(out), Settings(workers=0))
    return out, summary


def test_every_sample_file_ends_in_media_or_failures_exactly_once(in_process_run):
    out, summary = in_process_run
    media = pq.read_table(out / "media")
    failures = pq.read_table(out / "failures")
    assert media.num_rows + failures.num_rows == len(sample_files())
    uris = media.column("uri").to_pylist() + failures.column("uri").to_pylist()
    assert sorted(Path(u).resolve() for u in uris) == sorted(p.resolve() for p in sample_files())
    assert summary.processed == media.num_rows and summary.failed == failures.num_rows


def test_the_corrupt_sample_file_is_a_failure_row_with_its_reason(in_process_run):
    out, _ = in_process_run
    rows = pq.read_table(out / "failures").to_pylist()
    corrupt = [r for r in rows if r["uri"].endswith("corrupt.jpg")]
    assert len(corrupt) == 1
    assert corrupt[0]["stage"] == "decode" and corrupt[0]["kind"] in ("truncated", "corrupt")
    assert "corrupt.jpg" in corrupt[0]["message"]


def test_results_agree_with_the_ground_truth(in_process_run):
    out, _ = in_process_run
    report = evaluate_run(str(out), TRUTH)
    assert report["detector_recall"] >= 0.9, report
    assert report["classifier_accuracy"] >= 0.9, report
    assert report["blank_accuracy"] >= 0.9, report


def test_bursts_become_events_and_exif_time_is_used(in_process_run):
    out, _ = in_process_run
    media = pq.read_table(out / "media").to_pylist()
    events = pq.read_table(out / "events").to_pylist()
    assert all(m["timestamp_source"] == "exif" for m in media)
    truth = list(csv.DictReader(TRUTH.open()))
    assert 1 < len(events) < len([t for t in truth if t["kind"] != "corrupt"])
    assert sum(e["media_count"] for e in events) == len(media)


def test_ray_workers_give_the_same_tables_as_in_process(in_process_run, tmp_path):
    reference, _ = in_process_run
    summary = run_folder(str(SAMPLE), str(tmp_path), Settings(workers=2, batch_size=4))
    assert summary.startup_seconds > 0

    def key_rows(folder: Path, table: str, columns: list[str]):
        return sorted(
            tuple(r[c] for c in columns) for r in pq.read_table(folder / table).to_pylist()
        )

    media_columns = ["media_id", "observation_type", "event_id", "event_label"]
    observation_columns = ["media_id", "category", "label", "bbox_x", "bbox_y"]
    assert key_rows(tmp_path, "media", media_columns) == key_rows(reference, "media", media_columns)
    assert key_rows(tmp_path, "observations", observation_columns) == key_rows(
        reference, "observations", observation_columns
    )


def test_a_run_leaves_each_table_checkpointed_at_its_latest_version(in_process_run):
    """A reader after the run opens one Parquet checkpoint per table, not the commits since."""
    out, _ = in_process_run
    for name in delta.WRITE_ORDER:
        table = delta.open_table(str(out), name)
        last = json.loads((out / name / "_delta_log" / "_last_checkpoint").read_text())
        assert last["version"] == table.version(), name


def test_the_readmes_reading_snippet_runs_on_the_sample_tables(in_process_run, tmp_path):
    """The README's Python block, as a reader copies it, against this run's tables (its
    `results/`): a version it pins must exist, a library it imports must be documented."""
    import re
    import subprocess
    import sys

    out, _ = in_process_run
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no Python block"
    (tmp_path / "results").symlink_to(out)
    for block in blocks:
        done = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "roe deer" in done.stdout  # the species counts it prints
