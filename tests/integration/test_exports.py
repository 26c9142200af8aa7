"""Both exports on a real run of the sample photos and of real camera-trap photos the project did
not make (tests/data/real_photos: three frames of the official Camtrap DP example's Reconyx
burst): a Camtrap DP 1.0.2 package that the official schemas accept, MegaDetector JSON that reads
back into the tables row for row, the faults of issue 19 each checked on its own, people's
reviews in both exports, and the whole chain once more on the real S3 server (Ceph RGW)."""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trapline.pipelines.deployments import load_deployments
from trapline.pipelines.readers import read_table
from trapline.services.cli.main import app
from trapline.services.run.folder import run_folder
from trapline.services.settings import Settings
from trapline.services.tools.exports.camtrap_dp import export_camtrap_dp, write_package
from trapline.services.tools.exports.camtrap_metadata import descriptor, read_metadata
from trapline.services.tools.exports.camtrap_rows import build_tables
from trapline.services.tools.exports.camtrap_validate import validate_package
from trapline.services.tools.exports.common import (
    ExportError,
    Results,
    common_base,
    read_results,
    relative_to,
)
from trapline.services.tools.exports.megadetector import (
    DETECTION_CATEGORIES,
    format_problems,
    load_megadetector,
    megadetector_document,
)

pytest_plugins = ["support.s3_fixtures"]  # ceph_rgw, s3_settings, s3, s3_bucket
ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "examples" / "photos"
DEPLOYMENTS = ROOT / "examples" / "deployments.csv"
REAL_PHOTOS = ROOT / "tests" / "data" / "real_photos"
TOLERANCE = 1e-4  # the JSON keeps 4 decimals, as MegaDetector does
METADATA_YAML = (
    "title: Vercors and Jura 2024\n"
    "contributors:\n  - {title: Jane Doe, email: jane@example.org, role: contact}\n"
    "licenses:\n  - {name: CC0-1.0, scope: data}\n  - {name: CC-BY-4.0, scope: media}\n"
    "project: {title: Lynx corridors, samplingDesign: targeted, individualAnimals: false}\n"
)


@pytest.fixture(scope="module")
def metadata(tmp_path_factory) -> str:
    """A complete metadata file: what a publisher gives (contributors, licences, project)."""
    path = tmp_path_factory.mktemp("metadata") / "metadata.yaml"
    path.write_text(METADATA_YAML)
    return str(path)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> str:
    """The sample photos through the real pipeline (demo models, in-process), once per module."""
    out = tmp_path_factory.mktemp("results")
    settings = Settings(workers=0, deployments_file=str(DEPLOYMENTS))
    summary = run_folder(str(PHOTOS), str(out), settings)
    assert summary.processed > 30 and summary.failed >= 1  # the sample has a truncated photo
    return str(out)


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


# --- Camtrap DP ------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["both", "media", "event"])
def test_camtrap_dp_package_of_the_sample_passes_the_official_schemas(
    sample_run, metadata, tmp_path, level
):
    report = export_camtrap_dp(
        sample_run, str(tmp_path), str(DEPLOYMENTS), metadata, observation_level=level
    )

    assert report.validation is not None and report.validation.errors == []
    assert report.validation.rows_checked == sum(report.rows.values())
    media = read_table(sample_run, "media").to_pylist()
    observations = read_table(sample_run, "observations").to_pylist()
    events = read_table(sample_run, "events").to_pylist()
    rows = read_csv(tmp_path / "observations.csv")
    by_level = {name: [r for r in rows if r["observationLevel"] == name] for name in ("media", "event")}  # fmt: skip
    detected = {o["media_id"] for o in observations}
    expected_media_level = len(observations) + sum(m["media_id"] not in detected for m in media)
    assert len(by_level["media"]) == (expected_media_level if level != "event" else 0)
    assert len(by_level["event"]) == (len(events) if level != "media" else 0)
    assert {r["mediaID"] for r in read_csv(tmp_path / "media.csv")} == {
        m["media_id"] for m in media
    }
    package = json.loads((tmp_path / "datapackage.json").read_text())
    assert package["project"]["observationLevel"] == {"both": ["media", "event"]}.get(
        level, [level]
    )
    names = {r["scientificName"] for r in rows if r["scientificName"]}
    assert names and names == {t["scientificName"] for t in package["taxonomic"]}


def test_photos_with_a_person_are_not_public_in_camtrap_dp(sample_run, metadata, tmp_path):
    export_camtrap_dp(sample_run, str(tmp_path), str(DEPLOYMENTS), metadata)

    people = {
        o["media_id"]
        for o in read_table(sample_run, "observations").to_pylist()
        if o["category"] == "person"
    }
    media = read_csv(tmp_path / "media.csv")
    assert people, "the sample has photos of people"
    assert {m["mediaID"] for m in media if m["filePublic"] == "false"} == people
    human_rows = [r for r in read_csv(tmp_path / "observations.csv") if r["observationType"] == "human"]  # fmt: skip
    assert {r["mediaID"] for r in human_rows if r["mediaID"]} == people


def test_times_are_in_each_cameras_zone_and_a_missing_end_is_taken_from_the_photos(
    sample_run, metadata, tmp_path
):
    report = export_camtrap_dp(sample_run, str(tmp_path), str(DEPLOYMENTS), metadata)

    deployments = {d["deploymentID"]: d for d in read_csv(tmp_path / "deployments.csv")}
    assert deployments["deployment-a"]["deploymentEnd"] == "2024-07-01T10:00:00+02:00"
    last_b = max(m["timestamp"] for m in read_csv(tmp_path / "media.csv") if m["deploymentID"] == "deployment-b")  # fmt: skip
    assert deployments["deployment-b"]["deploymentEnd"] == last_b  # Europe/Zurich in May: +02:00
    assert last_b.endswith("+02:00")
    assert any("deployment-b: no end" in note for note in report.notes)


def test_a_photo_without_capture_time_is_left_out_and_listed_and_the_rest_stays_valid(
    sample_run, tmp_path
):
    results = read_results(sample_run)
    undated = copy.deepcopy(results)
    victim = undated.media[0]
    victim["timestamp"] = None
    tables = build_tables(undated, load_deployments(str(DEPLOYMENTS)))
    write_package(
        tmp_path, tables, descriptor(tables, read_metadata(None), ("media", "event"), "x")
    )

    assert tables.excluded.media == [
        {"uri": victim["uri"], "reason": "no capture time (timestamp)"}
    ]
    assert victim["media_id"] not in {m["mediaID"] for m in tables.media}
    assert victim["media_id"] not in {o.get("mediaID") for o in tables.observations}
    assert validate_package(tmp_path).errors == []


def test_static_boxes_are_not_observations_and_rolled_up_taxa_keep_their_rank(sample_run, tmp_path):
    results = copy.deepcopy(read_results(sample_run))
    animals = [o for o in results.observations if o["category"] == "animal" and o["top_labels"]]
    static, rolled = animals[0], animals[1]
    static["is_static"] = True
    rolled.update(label="Cervidae", scientific_name="Cervidae", taxon_rank="family",
                  label_source="rollup", classifier_label="undefined", label_probability=0.97)  # fmt: skip
    tables = build_tables(results, load_deployments(str(DEPLOYMENTS)), ("media",))
    package = descriptor(tables, read_metadata(None), ("media",), "x")
    write_package(tmp_path, tables, package)

    assert validate_package(tmp_path).errors == []
    ids = {o["observationID"]: o for o in tables.observations}
    assert static["observation_id"] not in ids
    assert ids[rolled["observation_id"]]["scientificName"] == "Cervidae"
    assert ids[rolled["observation_id"]]["classificationProbability"] == pytest.approx(0.97)
    cervidae = next(t for t in package["taxonomic"] if t["scientificName"] == "Cervidae")
    # No English name: "undefined" (the classifier's answer) or a species' would be wrong.
    assert cervidae == {"scientificName": "Cervidae", "taxonRank": "family"}
    document, _ = megadetector_document(results)  # the JSON keeps every box, static ones too
    assert sum(len(i["detections"] or []) for i in document["images"]) == len(results.observations)
    # ... and leads the rolled-up box's classifications with the same answer as Camtrap DP.
    detection = detection_of(document, results, rolled["observation_id"])
    categories = document["classification_categories"]
    assert categories[detection["classifications"][0][0]] == "Cervidae"
    assert detection["classifications"][0][1] == pytest.approx(0.97)


def test_the_validator_reports_what_the_official_schemas_refuse(sample_run, metadata, tmp_path):
    export_camtrap_dp(sample_run, str(tmp_path), str(DEPLOYMENTS), metadata)
    media = (tmp_path / "media.csv").read_text().splitlines()
    fields = media[1].split(",")
    fields[1], fields[3] = "no-such-deployment", "2024-05-03 09:30"  # deploymentID, timestamp
    (tmp_path / "media.csv").write_text("\n".join([media[0], ",".join(fields), *media[2:]]) + "\n")
    package = json.loads((tmp_path / "datapackage.json").read_text())
    del package["project"]
    package["temporal"]["start"] = "2024-13-40"
    (tmp_path / "datapackage.json").write_text(json.dumps(package))

    errors = "\n".join(validate_package(tmp_path).errors)

    assert "'project' is a required property" in errors
    assert "temporal/start" in errors
    assert "media row 2 timestamp: type-error" in errors
    assert "foreign-key" in errors and "no-such-deployment" in errors


def test_a_deployment_without_coordinates_is_refused_by_name(sample_run, metadata, tmp_path):
    text = DEPLOYMENTS.read_text().replace("46.5012,6.1234", ",")
    (tmp_path / "deployments.csv").write_text(text)
    with pytest.raises(ExportError, match=r"no latitude/longitude: deployment-b"):
        export_camtrap_dp(sample_run, str(tmp_path / "pkg"), str(tmp_path / "deployments.csv"), metadata)  # fmt: skip
    with pytest.raises(ExportError, match="deployments file"):
        export_camtrap_dp(sample_run, str(tmp_path / "pkg"), None, metadata)
    assert not (tmp_path / "pkg").exists()


def test_the_metadata_file_fills_datapackage_and_a_misspelt_key_is_refused(sample_run, tmp_path):
    metadata = tmp_path / "metadata.yaml"
    metadata.write_text(METADATA_YAML)
    report = export_camtrap_dp(sample_run, str(tmp_path / "pkg"), str(DEPLOYMENTS), str(metadata))

    package = json.loads((tmp_path / "pkg" / "datapackage.json").read_text())
    assert report.validation is not None and report.validation.valid
    assert report.to_fill_in == []
    assert package["name"] == "vercors-and-jura-2024"
    assert package["contributors"][0]["title"] == "Jane Doe"
    assert package["project"]["samplingDesign"] == "targeted"
    metadata.write_text("licence: CC0-1.0\n")
    with pytest.raises(ExportError, match="unknown keys licence"):
        export_camtrap_dp(sample_run, str(tmp_path / "pkg2"), str(DEPLOYMENTS), str(metadata))


# --- MegaDetector JSON -----------------------------------------------------------------------


def assert_round_trip(document: dict, root: str, base: str) -> None:
    """Every media row once with its detections, every failure with `failure`, nothing else;
    each box's classifications are the classifier's top-k, led by the photo's own answer
    when post-processing changed it (a rolled-up taxon), never by the event's vote."""
    tables = {
        name: read_table(root, name).to_pylist() for name in ("media", "observations", "failures")
    }
    entries = {}
    for image in document["images"]:
        uri = f"{base}/{image['file']}" if base else image["file"]
        assert uri not in entries, f"{uri} listed twice"
        entries[uri] = image
    assert set(entries) == {m["uri"] for m in tables["media"]} | {f["uri"] for f in tables["failures"]}  # fmt: skip
    for failure in tables["failures"]:
        image = entries[failure["uri"]]
        assert image["detections"] is None and failure["kind"] in image["failure"]
    classes = document["classification_categories"]
    by_media: dict[str, list[dict]] = {}
    for row in tables["observations"]:
        by_media.setdefault(row["media_id"], []).append(row)
    for media in tables["media"]:
        image = entries[media["uri"]]
        assert image.get("failure") is None
        expected = sorted(by_media.get(media["media_id"], []), key=lambda o: int(o["observation_id"].rsplit("-", 1)[1]))  # fmt: skip
        assert len(image["detections"]) == len(expected)
        for detection, row in zip(image["detections"], expected):
            assert DETECTION_CATEGORIES[detection["category"]] == row["category"]
            assert detection["conf"] == pytest.approx(row["detection_conf"], abs=TOLERANCE)
            box = [row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"]]
            assert detection["bbox"] == pytest.approx(box, abs=TOLERANCE)
            pairs = [(classes[c], p) for c, p in detection.get("classifications", [])]
            raw = list(zip(row["top_labels"] or [], row["top_probabilities"] or []))
            if pairs and raw and pairs[0][0] not in (row["top_labels"] or []):
                # A higher taxon of this photo's roll-up: never the event's vote.
                assert pairs[0][0] != row["label"] or row["label_source"] != "sequence"
                assert pairs[0][1] >= 0.8 - TOLERANCE  # the roll-up threshold
                pairs = pairs[1:]
            assert [c for c, _ in pairs] == [c for c, _ in raw][: len(pairs)] or pairs == []
            assert [p for _, p in pairs] == pytest.approx([p for _, p in raw][: len(pairs)], abs=TOLERANCE)  # fmt: skip


def detection_of(document: dict, results: Results, observation_id: str) -> dict:
    """The MegaDetector detection of one observation (by photo file and index)."""
    media = {m["media_id"]: m for m in results.media}
    uri = media[observation_id.rsplit("-", 1)[0]]["uri"]
    image = next(i for i in document["images"] if uri.endswith("/" + i["file"]))
    return image["detections"][int(observation_id.rsplit("-", 1)[1])]


def test_megadetector_json_reads_back_into_the_tables_row_for_row(sample_run, tmp_path):
    out = tmp_path / "md.json"
    result = CliRunner().invoke(app, ["export", "megadetector", sample_run, "--out", str(out)])
    assert result.exit_code == 0, result.output

    document = load_megadetector(out.read_text())  # raises on any broken format rule
    assert document["info"]["format_version"] == "1.6"
    assert {image["file"].split("/")[0] for image in document["images"]} == {"deployment-a", "deployment-b"}  # fmt: skip
    assert any(d.get("classifications") for i in document["images"] for d in i["detections"] or [])
    assert_round_trip(document, sample_run, str(PHOTOS))


def test_megadetector_checks_catch_broken_entries():
    broken = {
        "info": {"format_version": "1.6"},
        "detection_categories": {"1": "animal"},
        "classification_categories": {"0": "fox"},
        "images": [
            {"file": "a.jpg", "detections": [{"category": "1", "conf": 1, "bbox": [0, 0, 1, 1]}]},
            {"file": "b.jpg", "failure": "decode/corrupt", "detections": []},
            {"file": "c.jpg"},
            {"file": "d.jpg", "detections": [{"category": "1", "conf": 0.5, "bbox": [0, 0, 1, 1],
                                              "classifications": [["0", 0.1], ["7", 0.9]]}]},
        ],
    }  # fmt: skip
    problems = "\n".join(format_problems(broken))
    assert "a.jpg: conf 1 is not a float" in problems
    assert "b.jpg: a failure needs a string and null detections" in problems
    assert "c.jpg: processed but without a detections list" in problems
    assert "d.jpg: classifications are not most probable first" in problems
    assert "d.jpg: unknown classification category '7'" in problems


def test_a_failure_of_an_already_listed_file_is_kept_in_custom_metadata(sample_run):
    results = read_results(sample_run)
    repeat = dict(results.failures[0], uri=results.media[0]["uri"], kind="duplicate")
    doubled = Results(results.root, results.media, results.observations, results.events, [*results.failures, repeat])  # fmt: skip
    document, report = megadetector_document(doubled)

    files = [image["file"] for image in document["images"]]
    assert len(files) == len(set(files)) == len(results.media) + len(results.failures)
    assert [item["file"] for item in report.not_listed] == [results.media[0]["uri"].split("photos/", 1)[1]]  # fmt: skip
    assert document["info"]["custom_metadata"]["failures_not_listed"] == report.not_listed
    assert common_base(["s3://b/x/1.jpg", "s3://b/y/2.jpg"]) == "s3://b"
    assert common_base(["s3://b/1.jpg", "/data/2.jpg"]) == ""


# --- S3 end to end ---------------------------------------------------------------------------


def test_s3_photos_to_s3_tables_to_both_exports_through_the_cli(
    s3, s3_bucket, s3_settings, tmp_path
):
    bucket = s3_bucket("exports")
    for photo in sorted(PHOTOS.rglob("*.jpg")):
        s3.put_file(str(photo), f"{bucket}/card/{photo.relative_to(PHOTOS).as_posix()}")
    s3.put_file(str(DEPLOYMENTS), f"{bucket}/config/deployments.csv")
    deployments = f"s3://{bucket}/config/deployments.csv"
    results = f"s3://{bucket}/results"
    summary = run_folder(
        f"s3://{bucket}/card",
        results,
        Settings(workers=0, deployments_file=deployments, **vars(s3_settings)),  # fmt: skip
    )
    assert summary.processed + summary.failed == summary.files == len(list(PHOTOS.rglob("*.jpg")))

    env = {  # the CLI reads its S3 options from the environment, as in production
        "TRAPLINE_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
        "TRAPLINE_S3_REGION": s3_settings.s3_region,
        "TRAPLINE_S3_ACCESS_KEY_ID": s3_settings.s3_access_key_id,
        "TRAPLINE_S3_SECRET_ACCESS_KEY": s3_settings.s3_secret_access_key,
    }
    runner = CliRunner()
    package_url = f"s3://{bucket}/exports/camtrap-dp"
    camtrap = runner.invoke(app, ["export", "camtrap-dp", results, "--deployments", deployments, "--out", package_url, "--draft"], env=env)  # fmt: skip
    assert camtrap.exit_code == 0, camtrap.output
    md = runner.invoke(app, ["export", "megadetector", results, "--out", f"s3://{bucket}/exports/md.json"], env=env)  # fmt: skip
    assert md.exit_code == 0, md.output

    local = tmp_path / "pkg"
    local.mkdir()
    for name in ("datapackage.json", "deployments.csv", "media.csv", "observations.csv"):
        s3.get_file(f"{bucket}/exports/camtrap-dp/{name}", str(local / name))
    assert validate_package(local).errors == []
    media = read_csv(local / "media.csv")
    assert len(media) == summary.processed
    # Relative to the folder given to the run (s3://bucket/card), as Camtrap DP allows.
    assert all(m["filePath"].startswith("deployment-") for m in media)
    assert all(s3.exists(f"{bucket}/card/{m['filePath']}") for m in media)
    observations = read_table(results, "observations").to_pylist()
    people = {o["media_id"] for o in observations if o["category"] == "person"}
    assert people and {m["mediaID"] for m in media if m["filePublic"] == "false"} == people
    document = load_megadetector(s3.cat(f"{bucket}/exports/md.json").decode())
    assert document["info"]["custom_metadata"]["base"] == f"s3://{bucket}/card"
    assert_round_trip(document, results, f"s3://{bucket}/card")
    shutil.rmtree(local)


# --- Issue 19: each fault, checked on its own, on the sample and on real photos --------------


def taxonomy_labels() -> dict[str, str]:
    """classifier label -> scientific name, read from the shipped taxonomy.csv directly."""
    text = (ROOT / "pipelines" / "postprocess" / "taxonomy.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {row["label"]: row["scientific_name"] for row in rows}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[str, Path, Path]:
    """Real camera-trap photos (tests/data/real_photos: a Reconyx burst of a heron) in a card
    folder with one deployment, plus a truncated file, run through the pipeline."""
    card = tmp_path_factory.mktemp("card")
    shutil.copytree(REAL_PHOTOS / "heron-cam", card / "heron-cam")
    photo = next(iter(sorted((card / "heron-cam").iterdir())))
    (card / "heron-cam" / "cut.JPG").write_bytes(photo.read_bytes()[:5000])
    deployments = card.parent / f"{card.name}-deployments.csv"
    deployments.write_text(
        "deployment_id,location_name,latitude,longitude,utc_offset\n"
        "heron-cam,B_HS_val 2_processiepark,51.496,4.774,+02:00\n"
    )
    out = tmp_path_factory.mktemp("real-results")
    summary = run_folder(str(card), str(out), Settings(workers=0, deployments_file=str(deployments)))  # fmt: skip
    assert summary.processed == 3 and summary.failed == 1
    return str(out), card, deployments


def both_exports(root: str, deployments: Path, metadata: str, out: Path) -> tuple[dict, dict]:
    """Camtrap DP package (validated) and MegaDetector JSON (format-checked) of `root`."""
    report = export_camtrap_dp(root, str(out / "pkg"), str(deployments), metadata)
    assert report.validation is not None and report.validation.errors == []
    md = CliRunner().invoke(app, ["export", "megadetector", root, "--out", str(out / "md.json")])
    assert md.exit_code == 0, md.output
    package = {name: read_csv(out / "pkg" / f"{name}.csv") for name in ("deployments", "media", "observations")}  # fmt: skip
    package["datapackage"] = json.loads((out / "pkg" / "datapackage.json").read_text())
    return package, load_megadetector((out / "md.json").read_text())


@pytest.mark.parametrize("which", ["sample", "real"])
def test_taxa_are_named_only_by_the_classifier_label_that_names_them(
    which, sample_run, real_run, metadata, tmp_path
):
    root, deployments = (sample_run, DEPLOYMENTS) if which == "sample" else real_run[::2]
    package, _ = both_exports(root, deployments, metadata, tmp_path)

    names = taxonomy_labels()
    taxa = package["datapackage"]["taxonomic"]
    rolled = {o["scientific_name"] for o in read_table(root, "observations").to_pylist() if o["label_source"] == "rollup"}  # fmt: skip
    assert rolled - {"Lagomorpha", "Aves"}, "the run has rolled-up taxa no label names"
    for taxon in taxa:
        english = taxon.get("vernacularNames", {}).get("eng")
        assert english != "undefined"
        if english is not None:  # the classifier label whose taxon this is, nothing else
            assert names[english] == taxon["scientificName"], taxon
        else:
            assert taxon["scientificName"] not in names.values(), taxon


def test_a_geofenced_taxon_does_not_get_the_blocked_species_name(sample_run, tmp_path):
    results = copy.deepcopy(read_results(sample_run))
    box = next(o for o in results.observations if o["category"] == "animal")
    # The classifier said reindeer in France; the geofence rolled it up to Cervidae.
    box.update(label="Cervidae", scientific_name="Cervidae", taxon_rank="family",
               label_source="geofence", label_probability=0.93, classifier_label="reindeer",
               rule="geofence: Rangifer tarandus allowed only in FI NO SE; reindeer in FR -> Cervidae (family)",
               top_labels=["reindeer", "red deer", "roe deer"], top_probabilities=[0.9, 0.02, 0.01])  # fmt: skip
    results.observations.sort(key=lambda o: o is not box)  # seen first
    tables = build_tables(results, load_deployments(str(DEPLOYMENTS)), ("media",))
    package = descriptor(tables, read_metadata(None), ("media",), "x")
    write_package(tmp_path, tables, package)

    assert validate_package(tmp_path).errors == []
    cervidae = next(t for t in package["taxonomic"] if t["scientificName"] == "Cervidae")
    assert "vernacularNames" not in cervidae
    assert "Rangifer tarandus" not in {t["scientificName"] for t in package["taxonomic"]}
    row = next(o for o in tables.observations if o["observationID"] == box["observation_id"])
    assert (row["scientificName"], row["classificationProbability"]) == ("Cervidae", 0.93)
    document, _ = megadetector_document(results)
    pairs = detection_of(document, results, box["observation_id"])["classifications"]
    categories = document["classification_categories"]
    assert [categories[pairs[0][0]], pairs[0][1]] == ["Cervidae", 0.93]
    assert categories[pairs[1][0]] == "reindeer"  # the classifier's own answer stays, below


def test_a_package_with_placeholders_needs_draft_and_says_what_is_missing(sample_run, tmp_path):
    runner = CliRunner()
    base = ["export", "camtrap-dp", sample_run, "--deployments", str(DEPLOYMENTS)]
    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "pkg")])
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "contributors" in message and "licenses" in message
    assert "--metadata" in message and "--draft" in message
    assert not (tmp_path / "pkg").exists()

    draft = runner.invoke(app, [*base, "--out", str(tmp_path / "draft"), "--draft"])
    assert draft.exit_code == 0, draft.output
    assert "DRAFT" in draft.output and "valid Camtrap DP" not in draft.output
    package = json.loads((tmp_path / "draft" / "datapackage.json").read_text())
    assert package["description"].startswith("DRAFT, not for publication: missing contributors")
    assert "licenses" in package["description"] and "licenses" not in package
    assert validate_package(tmp_path / "draft").errors == []  # a draft is still well formed

    template = tmp_path / "template.yaml"  # a template copied without filling it in
    template.write_text(METADATA_YAML.replace("Jane Doe", "TO FILL IN"))
    with pytest.raises(ExportError, match=r"contributors\[0\]\.title"):
        export_camtrap_dp(sample_run, str(tmp_path / "t"), str(DEPLOYMENTS), str(template))
    template.write_text(METADATA_YAML.replace("  - {name: CC-BY-4.0, scope: media}\n", ""))
    with pytest.raises(ExportError, match="licenses: none with scope media"):  # the profile's rule
        export_camtrap_dp(sample_run, str(tmp_path / "t"), str(DEPLOYMENTS), str(template))


def test_file_path_is_relative_to_the_run_folder_not_a_path_of_this_machine(
    sample_run, metadata, tmp_path
):
    package, document = both_exports(sample_run, DEPLOYMENTS, metadata, tmp_path)

    paths = [m["filePath"] for m in package["media"]]
    assert not [p for p in paths if p.startswith(("file:", "/")) or str(ROOT) in p]
    assert all((PHOTOS / p).is_file() for p in paths)  # they resolve from the run's folder
    md_files = {i["file"] for i in document["images"]}
    assert set(paths) <= md_files  # both exports name a photo the same way
    published = export_camtrap_dp(sample_run, str(tmp_path / "pub"), str(DEPLOYMENTS), metadata,
                                  media_url="https://photos.example.org/2024/")  # fmt: skip
    assert published.validation is not None and published.validation.valid
    urls = {m["filePath"] for m in read_csv(tmp_path / "pub" / "media.csv")}
    assert urls == {f"https://photos.example.org/2024/{p}" for p in paths}


def test_media_level_rows_carry_the_photos_own_answer_and_event_rows_the_vote(
    sample_run, metadata, tmp_path
):
    package, _ = both_exports(sample_run, DEPLOYMENTS, metadata, tmp_path)
    rows = {r["observationID"]: r for r in package["observations"]}
    events = {e["event_id"]: e for e in read_table(sample_run, "events").to_pylist()}
    voted = [o for o in read_table(sample_run, "observations").to_pylist() if o["label_source"] == "sequence"]  # fmt: skip
    unsure = [o for o in voted if o["classifier_label"] == "undefined"]
    agreed = [o for o in voted if o["classifier_label"] == o["label"]]
    assert unsure and agreed, "the sample has boxes the event vote relabelled"

    for box in unsure:  # the classifier was unsure: never the vote's species and probability
        row, event = rows[box["observation_id"]], events[box["event_id"]]
        assert row["scientificName"] != event["scientific_name"]
        assert float(row["classificationProbability"]) != pytest.approx(event["probability"], abs=TOLERANCE)  # fmt: skip
    for box in agreed:  # same species: the photo's probability, not the vote's
        row = rows[box["observation_id"]]
        assert float(row["classificationProbability"]) == pytest.approx(box["classification_probability"], abs=1e-5)  # fmt: skip
    for event in events.values():
        row = rows[f"{event['event_id']}-event"]
        if event["scientific_name"]:
            assert row["scientificName"] == event["scientific_name"]
            assert float(row["classificationProbability"]) == pytest.approx(event["probability"], abs=1e-5)  # fmt: skip


def test_an_undefined_box_the_vote_relabelled_stays_undefined_in_both_exports(sample_run):
    results = copy.deepcopy(read_results(sample_run))
    box = next(o for o in results.observations if o["category"] == "animal")
    box.update(label="red deer", scientific_name="Cervus elaphus", label_source="sequence",
               label_probability=0.99, classifier_label="undefined", classification_probability=0.62,
               rule="sequence: event vote red deer 0.99 (was undefined 0.62)",
               top_labels=["red deer", "roe deer", "fox"], top_probabilities=[0.62, 0.3, 0.01])  # fmt: skip
    tables = build_tables(results, load_deployments(str(DEPLOYMENTS)), ("media",))
    document, _ = megadetector_document(results, classification_threshold=0.8)

    row = next(o for o in tables.observations if o["observationID"] == box["observation_id"])
    assert row["scientificName"] is None and row["observationType"] == "animal"
    assert "classifierLabel:undefined | classifierProbability:0.62" in row["observationTags"]
    pairs = detection_of(document, results, box["observation_id"])["classifications"]
    assert pairs[0][1] == 0.62 < document["info"]["classifier_metadata"]["typical_classification_threshold"]  # fmt: skip


@pytest.mark.parametrize("which", ["sample", "real"])
def test_the_same_photo_reads_the_same_in_both_exports(
    which, sample_run, real_run, metadata, tmp_path
):
    root, deployments = (sample_run, DEPLOYMENTS) if which == "sample" else real_run[::2]
    package, document = both_exports(root, deployments, metadata, tmp_path)
    names = taxonomy_labels()
    categories = document["classification_categories"]
    images = {i["file"]: i for i in document["images"]}
    media = {m["mediaID"]: m["filePath"] for m in package["media"]}
    threshold = 0.8  # the classification_threshold setting's default

    compared = 0
    for row in package["observations"]:
        if row["observationLevel"] != "media" or row["observationType"] == "blank":
            continue
        index = int(row["observationID"].rsplit("-", 1)[1])
        detection = images[media[row["mediaID"]]]["detections"][index]
        pairs = detection.get("classifications") or []
        if row["scientificName"]:
            label, p = categories[pairs[0][0]], pairs[0][1]
            assert names.get(label, label) == row["scientificName"], row["observationID"]
            assert p == pytest.approx(float(row["classificationProbability"]), abs=TOLERANCE)
            compared += 1
        elif row["observationType"] == "animal":
            assert not pairs or pairs[0][1] < threshold
    assert compared >= 3


@pytest.mark.parametrize("which", ["sample", "real"])
def test_deployments_have_a_location_an_uncertainty_and_a_manufacturer_model(
    which, sample_run, real_run, metadata, tmp_path
):
    root, deployments = (sample_run, DEPLOYMENTS) if which == "sample" else real_run[::2]
    package, _ = both_exports(root, deployments, metadata, tmp_path)

    rows = {d["deploymentID"]: d for d in package["deployments"]}
    for row in rows.values():
        assert row["locationID"]
        assert int(row["coordinateUncertainty"]) >= 1
        manufacturer, model = row["cameraModel"].split("-", 1)
        assert manufacturer and " " not in manufacturer and model
    if which == "sample":  # typed in the deployments file as "Reconyx HF2X"
        assert rows["deployment-a"]["cameraModel"] == "Reconyx-HF2X"
        assert rows["deployment-b"]["cameraModel"] == "Browning-BTC-8E"
        assert rows["deployment-a"]["locationID"] == "vercors-forest-edge"
        # 4 decimals: a cell of 11 m (north) by 8 m (east, at 45° N): 14 m to its far corner
        assert rows["deployment-a"]["coordinateUncertainty"] == "14"
    else:  # not in the file: the photos' EXIF Make and Model
        assert rows["heron-cam"]["cameraModel"] == "RECONYX-HYPERFIRE 2 COVERT"
        assert rows["heron-cam"]["locationID"] == "b-hs-val-2-processiepark"


@pytest.mark.parametrize("which", ["sample", "real"])
def test_megadetector_json_has_no_path_of_this_machine_and_is_relative_to_the_run_folder(
    which, sample_run, real_run, tmp_path
):
    root, card = (sample_run, PHOTOS) if which == "sample" else real_run[:2]
    out = tmp_path / "md.json"
    result = CliRunner().invoke(app, ["export", "megadetector", root, "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    document = load_megadetector(text)

    for machine_path in {str(card), str(ROOT), root, str(Path(root).parent)}:
        assert machine_path not in text
    files = {i["file"] for i in document["images"]}
    assert all((card / file).is_file() for file in files)  # relative to the folder run on
    failed = [i for i in document["images"] if i.get("failure")]
    assert failed and all(i["file"] in i["failure"] for i in failed)
    if which == "real":  # one deployment folder: still below the run's folder, not inside it
        assert all(file.startswith("heron-cam/") for file in files)
        assert_round_trip(document, root, str(card))


def test_reviewed_labels_win_in_both_exports_and_the_machines_answer_is_kept(
    sample_run, metadata, tmp_path
):
    reviews = pytest.importorskip("trapline.pipelines.reviews")
    root = tmp_path / "results"
    shutil.copytree(sample_run, root)
    results = read_results(str(root))
    events = {e["event_id"]: e for e in results.events}
    by_event: dict[str, list[dict]] = {}
    for o in results.observations:
        by_event.setdefault(o["event_id"], []).append(o)
    animal = [e for e in events.values() if e["scientific_name"] and len(by_event.get(e["event_id"], [])) >= 2]  # fmt: skip
    relabelled, to_person, with_false_box = animal[0], animal[1], animal[2]
    false_box = by_event[with_false_box["event_id"]][0]
    earlier = datetime(2024, 6, 1, 8, 0, tzinfo=timezone.utc)
    later = datetime(2024, 6, 2, 9, 30, tzinfo=timezone.utc)

    def event_review(event: dict, label: str, **extra) -> dict:
        return {"target": "event", "event_id": event["event_id"], "label": label,
                "deployment_id": event["deployment_id"], "machine_label": event["label"],
                "machine_probability": event["probability"], **extra}  # fmt: skip

    reviews.append_reviews(str(root), [event_review(relabelled, "fox", reviewed_at=earlier)], "ana")  # fmt: skip
    reviews.append_reviews(str(root), [
        event_review(relabelled, "Vulpes lagopus", count=2, comment="two arctic foxes", reviewed_at=later),
        event_review(to_person, "person", reviewed_at=later),
        {"target": "observation", "event_id": false_box["event_id"], "reviewed_at": later,
         "observation_id": false_box["observation_id"], "deployment_id": false_box["deployment_id"],
         "label": "blank", "machine_label": false_box["label"]},
    ], "ben")  # fmt: skip

    package, document = both_exports(str(root), DEPLOYMENTS, metadata, tmp_path)

    rows = {r["observationID"]: r for r in package["observations"]}
    event_row = rows[f"{relabelled['event_id']}-event"]
    assert {k: event_row[k] for k in ("scientificName", "count", "classificationMethod", "classifiedBy", "classificationTimestamp", "classificationProbability", "observationComments")} == {  # fmt: skip
        "scientificName": "Vulpes lagopus", "count": "2", "classificationMethod": "human",
        "classifiedBy": "ben", "classificationTimestamp": "2024-06-02T09:30:00Z",
        "classificationProbability": "", "observationComments": "two arctic foxes",
    }  # fmt: skip
    assert f"machineLabel:{relabelled['label']} | machineProbability:" in event_row["observationTags"]  # fmt: skip
    for box in by_event[relabelled["event_id"]]:  # the event review speaks for its boxes
        row = rows[box["observation_id"]]
        assert (row["scientificName"], row["classificationMethod"], row["classifiedBy"]) == ("Vulpes lagopus", "human", "ben")  # fmt: skip
        assert "machineLabel:" in row["observationTags"] and row["bboxX"]
    assert false_box["observation_id"] not in rows  # a person said nothing is there
    people = {m["media_id"] for m in results.media if m["event_id"] == to_person["event_id"]}
    assert {m["mediaID"] for m in package["media"] if m["filePublic"] == "false"} >= people
    assert {rows[o["observation_id"]]["observationType"] for o in by_event[to_person["event_id"]]} == {"human"}  # fmt: skip
    assert "Vulpes lagopus" in {t["scientificName"] for t in package["datapackage"]["taxonomic"]}

    categories = document["classification_categories"]
    for box in by_event[relabelled["event_id"]]:
        detection = detection_of(document, results, box["observation_id"])
        first = detection["classifications"][0]
        assert (detection["category"], categories[first[0]], first[1]) == ("1", "Vulpes lagopus", 1.0)  # fmt: skip
    for box in by_event[to_person["event_id"]]:
        detection = detection_of(document, results, box["observation_id"])
        assert detection["category"] == "2" and "classifications" not in detection
    media = {m["media_id"]: m for m in results.media}
    false_file = relative_to(media[false_box["media_id"]]["uri"], str(PHOTOS))
    image = next(i for i in document["images"] if i["file"] == false_file)
    assert len(image["detections"]) == len(results.observations_by_media()[false_box["media_id"]]) - 1  # fmt: skip
    noted = document["info"]["custom_metadata"]["reviewed"]
    assert {n["reviewer"] for n in noted} == {"ben"}
    assert {"file": false_file, "detection": false_box["observation_id"], "written": "removed (blank)"}.items() <= next(n for n in noted if n["detection"] == false_box["observation_id"]).items()  # fmt: skip


def test_base_sets_the_folder_file_paths_are_relative_to(real_run, metadata, tmp_path):
    root, card, deployments = real_run
    runner = CliRunner()
    base = ["--base", str(card / "heron-cam")]  # as if the run had been given the camera folder
    camtrap = runner.invoke(app, ["export", "camtrap-dp", root, "--deployments", str(deployments), "--metadata", metadata, "--out", str(tmp_path / "pkg"), *base])  # fmt: skip
    assert camtrap.exit_code == 0, camtrap.output
    md = runner.invoke(app, ["export", "megadetector", root, "--out", str(tmp_path / "md.json"), *base])  # fmt: skip
    assert md.exit_code == 0, md.output

    paths = {m["filePath"] for m in read_csv(tmp_path / "pkg" / "media.csv")}
    files = {i["file"] for i in load_megadetector((tmp_path / "md.json").read_text())["images"]}
    assert len(paths) == 3  # the three real photos processed (the cut one failed)
    assert all("/" not in p and (card / "heron-cam" / p).is_file() for p in paths)
    assert paths <= files and "cut.JPG" in files
