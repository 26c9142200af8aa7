"""`trapline report` on the bundled sample and on a generated four-camera set.

The tables come from real in-process runs of the demo models. The page is opened in Debian's
chromium driven by Playwright (`tests/browser/check_page.js`, installed by
scripts/install_chromium.sh, which scripts/test.sh runs): no console error, every plot loaded
and visible, and a screenshot that is not blank.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from support.browser import BROWSER, CHROMIUM, NODE, needs_browser
from support.multi_deployment import PLAN, write_multi_deployment
from typer.testing import CliRunner

from trapline.pipelines import delta
from trapline.pipelines.readers import read_table
from trapline.services.cli.main import app
from trapline.services.run.folder import run_folder
from trapline.services.settings import Settings
from trapline.services.tools.report import build_report
from trapline.services.tools.sort import LOG_FOLDER, sort_results

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "photos"
DEPLOYMENTS = ROOT / "examples" / "deployments.csv"
TRUTH = ROOT / "examples" / "ground_truth.csv"


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    results, out = base / "results", base / "report"
    run_folder(str(SAMPLE), str(results), Settings(workers=0, deployments_file=str(DEPLOYMENTS)))
    result = CliRunner().invoke(
        app,
        ["report", str(results), "--out", str(out), "--deployments", str(DEPLOYMENTS),
         "--json-summary", str(base / "report.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return results, out, json.loads((base / "report.json").read_text())


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    base = tmp_path_factory.mktemp("multi")
    photos, deployments, local_times = write_multi_deployment(base)
    results = base / "results"
    run_folder(str(photos), str(results), Settings(workers=0, deployments_file=str(deployments)))
    summary = build_report(str(results), str(base / "report"), str(deployments))
    return results, base / "report", summary, local_times


def render(page: Path, screenshot: Path) -> dict:
    done = subprocess.run(
        [NODE, str(BROWSER / "check_page.js"), str(page), str(screenshot), CHROMIUM],
        capture_output=True, text=True, timeout=120, cwd=BROWSER,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sample_counts_match_the_tables(sample_report):
    results, out, summary = sample_report
    media = read_table(str(results), "media").to_pandas()
    assert summary["media"] == len(media) == 36 and summary["failures"] == 1  # corrupt.jpg
    assert summary["blank_rate"] == pytest.approx((media.observation_type == "blank").mean())
    page = (out / "index.html").read_text()
    assert f"{100 * summary['blank_rate']:.1f} %" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline
    species = sorted(set(media.event_label.dropna()) - {"undefined"})
    assert [p for p in summary["plots"] if p.startswith("diel-")] == [
        "diel-" + s.replace(" ", "-") for s in species
    ]
    assert {"detections-per-class", "detection-rate", "deployment-map"} <= set(summary["plots"])


def test_spreadsheet_has_one_row_per_photo_in_camera_local_time(sample_report):
    results, out, _ = sample_report
    sheet = pd.read_csv(out / "photos.csv")
    excel = pd.read_excel(out / "photos.xlsx")
    media = read_table(str(results), "media").to_pandas()
    assert len(sheet) == len(excel) == len(media)
    assert sorted(sheet.media_id) == sorted(excel.media_id) == sorted(media.media_id)
    # the ground truth's times are the cameras' own wall clocks: the report must give them back
    with TRUTH.open() as handle:
        truth = {
            str(SAMPLE / r["file"]): r["timestamp"]
            for r in csv.DictReader(handle)
            if r["timestamp"]
        }
    local = dict(zip(sheet.file, sheet.local_time))
    assert {f: local[f] for f in truth if f in local} == {f: truth[f] for f in truth if f in local}
    assert len(set(truth) & set(local)) == 36


@needs_browser
def test_sample_report_renders_in_headless_chromium_with_its_plots(sample_report, tmp_path):
    _, out, summary = sample_report
    shot = tmp_path / "report.png"
    seen = render(out / "index.html", shot)
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    assert seen["failed_requests"] == []
    assert seen["title"] == "Trapline report"
    images = {i["id"]: i for i in seen["images"]}
    assert set(images) == set(summary["plots"])
    for image in images.values():
        assert image["complete"] and image["natural_width"] > 100 and image["visible"], image
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape[0] > 1500 and pixels.std() > 10  # a long page with content, not blank


def test_multi_deployment_local_times_and_weekly_rate(multi):
    results, out, summary, local_times = multi
    sheet = pd.read_csv(out / "photos.csv")
    assert len(sheet) == summary.media == 40 and summary.failures == 0
    got = {f: datetime.fromisoformat(t) for f, t in zip(sheet.file, sheet.local_time)}
    assert got == local_times  # Europe/Berlin, +01:00, -05:00 and UTC all come back as written
    zones = dict(zip(sheet.deployment_id, sheet.time_zone))
    assert zones == {
        "ridge-1": "Europe/Berlin",
        "ridge-2": "+01:00",
        "valley-3": "-05:00",
        "orphan-4": "UTC",
    }
    assert summary.rate_unit == "week"  # 150 days between the first and last camera
    page = (out / "index.html").read_text()
    for deployment in PLAN:
        assert f"<td>{deployment}</td>" in page


def test_per_deployment_counts_are_the_tables(multi):
    """The page counts a deployment at a time (report_season.Season); the same counts from
    the whole media table in one frame, as a reader would make them."""
    results, out, _, _ = multi
    media = read_table(str(results), "media").to_pandas()
    page = (out / "index.html").read_text()
    shown = {}
    for row in re.findall(r"<tr><td>(.*?)</td></tr>", page.split('id="deployments"')[1]):
        cells = row.split("</td><td")
        shown[cells[0]] = [re.sub(r".*>", "", c) for c in cells[4:11]]
    expected = {}
    for deployment_id, group in media.groupby("deployment_id"):
        types = group["observation_type"].value_counts()
        expected[deployment_id] = [
            str(len(group)), "0", *(str(types.get(t, 0)) for t in ("blank", "animal", "human", "vehicle")),
            str(group.loc[group["event_label"].notna(), "event_id"].nunique()),
        ]  # fmt: skip
    assert shown == expected and set(shown) == set(PLAN)


def test_detections_count_only_photos_whose_media_row_is_committed(sample_report, tmp_path):
    """A report made while a run writes: the run commits a photo's observations before its
    media row, and the report counts whole photos only."""
    results, _, summary = sample_report
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    observations = read_table(str(copy), "observations")
    early = observations.slice(0, 1)
    for column, value in (("media_id", "not-yet-committed"), ("observation_id", "obs-early")):
        early = early.set_column(early.schema.get_field_index(column), column, pa.array([value]))
    delta.append(delta.create_table(str(copy), "observations"), "observations", early)
    assert read_table(str(copy), "observations").num_rows == observations.num_rows + 1
    build_report(str(copy), str(tmp_path / "report"))
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"<b>{observations.num_rows:,}</b>detections" in page
    sheet = pd.read_csv(tmp_path / "report" / "photos.csv")
    assert "not-yet-committed" not in set(sheet.media_id) and len(sheet) == summary["media"]


@needs_browser
def test_multi_deployment_report_renders(multi, tmp_path):
    _, out, summary, _ = multi
    seen = render(out / "index.html", tmp_path / "multi.png")
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    shown = {i["id"] for i in seen["images"] if i["visible"] and i["natural_width"] > 100}
    assert shown == set(summary.plots) and "deployment-map" in shown


def test_sort_on_the_multi_deployment_set(multi, tmp_path):
    results, _, _, _ = multi
    into = tmp_path / "sorted"
    report = sort_results(str(results), str(into))
    media = read_table(str(results), "media").to_pylist()
    files = [p for p in into.rglob("*.jpg") if LOG_FOLDER not in p.parts]
    assert report.statuses == {"done": 40} and len(files) == 40
    assert {p.parent.name for p in files} == set(PLAN)  # label/<deployment>/ for every camera
    by_uri = {i.source: Path(i.destination) for i in report.items}
    for row in media:
        expected = row["event_label"] or (
            row["observation_type"]
            if row["observation_type"] in ("blank", "human", "vehicle")
            else "undefined"
        )
        assert by_uri[row["uri"]].parent.parent.name == expected.replace(" ", "_")


def test_a_label_that_looks_like_math_is_drawn_as_text_not_parsed():
    """A reviewer's label '$\\undefinedmacro$' was parsed as mathtext in a chart title and
    the whole season's report failed (issue 37, item 6)."""
    from trapline.services.tools import report_plots

    hostile = "$\\undefinedmacro$"
    pngs = [
        report_plots.diel_activity(hostile, {3: 2, 22: 1}, "UTC"),
        report_plots.detections_per_class({"animal": 3}, {hostile: 3, "fox": 1}),
        report_plots.detection_rate(
            pd.DataFrame({hostile: [1, 2]}, index=pd.to_datetime(["2024-06-01", "2024-06-08"])),
            "week",
        ),
    ]
    assert all(png.startswith(b"\x89PNG") for png in pngs)
