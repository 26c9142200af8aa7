"""Deployments: the camera's clock zone places naive EXIF times; doubtful times are flagged."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines.deployments import (
    Deployment,
    Deployments,
    DeploymentsError,
    load_deployments,
    parse_timezone,
)
from trapline.pipelines.flow import assemble
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import Detection, MediaRef, MediaResult
from trapline.services.settings import Settings

CAMTRAP_DP = Path(__file__).resolve().parents[1] / "camtrap_dp_example"
UTC = timezone.utc


def test_naive_exif_time_is_shifted_by_the_deployments_offset():
    deployments = Deployments([Deployment("cam-1", utc_offset="+02:00")])
    placed = deployments.localize(datetime(2024, 6, 1, 22, 0), "cam-1", UTC)
    assert placed.utc == datetime(2024, 6, 1, 20, 0, tzinfo=UTC)
    assert placed.issue is None


def test_a_fixed_offset_camera_does_not_jump_at_the_dst_change():
    """Cameras keep one offset all season: 01:30 and 03:30 on the spring-forward night are 2 h apart."""
    deployments = Deployments([Deployment("cam-1", utc_offset="+01:00")])
    before = deployments.localize(datetime(2024, 3, 31, 1, 30), "cam-1", UTC).utc
    after = deployments.localize(datetime(2024, 3, 31, 3, 30), "cam-1", UTC).utc
    assert after - before == timedelta(hours=2)


def test_iana_zone_flags_the_repeated_and_the_skipped_hour():
    deployments = Deployments([Deployment("cam-1", utc_offset="Europe/Paris")])
    summer = deployments.localize(datetime(2024, 7, 1, 12, 0), "cam-1", UTC)
    assert summer.utc == datetime(2024, 7, 1, 10, 0, tzinfo=UTC) and summer.issue is None
    repeated = deployments.localize(datetime(2024, 10, 27, 2, 30), "cam-1", UTC)
    assert repeated.issue == "dst_ambiguous"
    assert repeated.utc == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)
    skipped = deployments.localize(datetime(2024, 3, 31, 2, 30), "cam-1", UTC)
    assert skipped.issue == "dst_gap"
    winter = deployments.localize(datetime(2024, 12, 1, 12, 0), "cam-1", UTC)
    assert winter.utc == datetime(2024, 12, 1, 11, 0, tzinfo=UTC) and winter.issue is None


def test_unknown_deployment_gets_the_default_offset_and_is_flagged_when_a_file_was_given():
    deployments = Deployments([Deployment("cam-1", utc_offset="+02:00")])
    placed = deployments.localize(
        datetime(2024, 6, 1, 12, 0), "cam-9", timezone(timedelta(hours=1))
    )
    assert placed.utc == datetime(2024, 6, 1, 11, 0, tzinfo=UTC)
    assert placed.issue == "default_offset"
    assert Deployments().localize(datetime(2024, 6, 1, 12, 0), "cam-9", UTC).issue is None


def test_a_time_outside_the_deployment_period_is_flagged():
    start = datetime(2024, 5, 1, tzinfo=UTC)
    deployments = Deployments(
        [Deployment("cam-1", utc_offset="+00:00", start=start, end=start + timedelta(days=30))]
    )
    assert deployments.localize(datetime(2024, 5, 10), "cam-1", UTC).issue is None
    assert deployments.localize(datetime(2019, 1, 1), "cam-1", UTC).issue == "outside_deployment"


@pytest.mark.parametrize(
    ("text", "offset"),
    [("+01:00", 60), ("-0530", -330), ("UTC+2:00", 120), ("Z", 0)],
)
def test_parse_timezone_accepts_the_usual_offset_spellings(text, offset):
    assert datetime(2024, 1, 1, tzinfo=parse_timezone(text)).utcoffset() == timedelta(
        minutes=offset
    )


def test_parse_timezone_refuses_nonsense_with_the_fix():
    with pytest.raises(DeploymentsError, match="Europe/Paris"):
        parse_timezone("Mars/Olympus")


def test_camtrap_dp_deployments_csv_is_read_as_is_and_takes_its_zone_from_deployment_start():
    deployments = load_deployments(str(CAMTRAP_DP / "deployments.csv"))
    first = deployments["00a2c20d"]
    assert first.location_name == "B_HS_val 2_processiepark"
    assert (first.latitude, first.longitude) == (51.496, 4.774)
    assert first.camera_model == "Reconyx-HF2X"
    assert first.tz().utcoffset(None) == timedelta(hours=2)


def test_yaml_folder_and_the_unquoted_offset_quirk(tmp_path):
    folder = tmp_path / "deployments"
    folder.mkdir()
    # Unquoted +01:00 is the base-60 integer 60 to PyYAML: the loader must still read one hour.
    (folder / "a.yaml").write_text(
        "deployment_id: cam-a\nutc_offset: +01:00\ncountry: fr\nlatitude: 45.1\nlongitude: 6.0\n"
    )
    (folder / "b.json").write_text(
        '{"deployments": [{"deploymentID": "cam-b", "timezone": "-05:30"}]}'
    )
    deployments = load_deployments(str(folder))
    assert set(deployments) == {"cam-a", "cam-b"}
    assert deployments["cam-a"].tz().utcoffset(None) == timedelta(hours=1)
    assert deployments["cam-a"].country == "FR"
    assert deployments["cam-b"].tz().utcoffset(None) == -timedelta(hours=5, minutes=30)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("deployment_id,latitude\ncam-1,123\n", "latitude 123.0"),
        ("location_name\nsomewhere\n", "no deployment_id"),
        ("deployment_id,utc_offset\ncam-1,+2h\n", "not a UTC offset"),
        ("deployment_id\ncam-1\ncam-1\n", "listed twice"),
    ],
)
def test_bad_deployments_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "deployments.csv"
    path.write_text(content)
    with pytest.raises(DeploymentsError, match=message):
        load_deployments(str(path))


def test_missing_deployments_file_is_an_error_not_an_empty_set(tmp_path):
    with pytest.raises(DeploymentsError, match="not found"):
        load_deployments(str(tmp_path / "nope.csv"))


def _result(
    media_id: str, deployment: str, when: datetime | None, *detections: Detection
) -> MediaResult:
    ref = MediaRef(uri=f"/photos/{deployment}/{media_id}.jpg", deployment_id=deployment)
    return MediaResult(ref, media_id, media_id, 4000, 3000, when, None, None, 1, list(detections))


def test_assemble_places_each_deployment_in_its_own_zone_and_flags_missing_times(tmp_path):
    path = tmp_path / "deployments.csv"
    path.write_text("deployment_id,utc_offset\nalps,+01:00\nquebec,-05:00\n")
    settings = Settings(deployments_file=str(path))
    person = Detection("person", 0.9, (0.1, 0.1, 0.2, 0.5))
    results = [
        _result("a", "alps", datetime(2024, 1, 10, 12, 0)),
        _result("q", "quebec", datetime(2024, 1, 10, 12, 0), person),
        _result("n", "alps", None),
    ]
    tables = assemble(results, [], settings.stage_options(), ModelNames("d", "1", "c", "1"), DEEPFAUNE_LABELS)
    media = {row["media_id"]: row for row in tables.media.to_pylist()}
    assert media["a"]["timestamp"] == datetime(2024, 1, 10, 11, 0, tzinfo=UTC)
    assert media["q"]["timestamp"] == datetime(2024, 1, 10, 17, 0, tzinfo=UTC)
    assert (
        media["n"]["timestamp"],
        media["n"]["timestamp_source"],
        media["n"]["timestamp_issue"],
    ) == (
        None,
        "none",
        "no_timestamp",
    )
    assert media["q"]["file_public"] is False and media["a"]["file_public"] is True
