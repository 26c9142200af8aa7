"""The bad-input corpus (tests/data/bad_inputs, built by scripts/make_bad_inputs.py) through the
real stages: each file ends in one clear failures row or a correct media row, nothing crashes,
and a decompression bomb is refused before its pixels cost memory.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.harness import REPO, account, read_rows
from support.hostile_images import pixel_bomb_png, progressive_jpeg, scan_bomb
from support.servers import TEST_SESSION_TIMEOUT_MS

from trapline.pipelines.uploads import Upload, encode_upload
from trapline.services.adapters import kafka_io
from trapline.services.run.folder import run_folder
from trapline.services.run.stream import StreamWorker
from trapline.services.run.workers import build_pipeline
from trapline.services.settings import Settings

CORPUS = REPO / "tests" / "data" / "bad_inputs"
FILES = CORPUS / "cam-bad"
EXPECTED: dict[str, dict] = json.loads((CORPUS / "expected.json").read_text())


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "make_bad_inputs", REPO / "scripts" / "make_bad_inputs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_corpus_is_what_the_script_builds(tmp_path):
    expected = _load_script().write_corpus(tmp_path)
    assert expected == EXPECTED
    assert sorted(p.name for p in (tmp_path / "cam-bad").iterdir()) == sorted(
        p.name for p in FILES.iterdir()
    )


def _check(
    by_name: dict[str, dict], failures_by_name: dict[str, dict], expected: dict[str, dict]
) -> None:
    for name, outcome in expected.items():
        if outcome["outcome"] == "media":
            assert name not in failures_by_name, f"{name}: {failures_by_name.get(name)}"
            row = by_name[name]
            assert (row["width"], row["height"]) == (outcome["width"], outcome["height"]), name
        else:
            assert name not in by_name, name
            row = failures_by_name[name]
            assert (row["stage"], row["kind"]) == (outcome["stage"], outcome["kind"]), (
                f"{name}: {row}"
            )
            assert name in row["message"] or name in row["uri"], (
                f"{name}: the row must name the file"
            )
            assert len(row["message"]) > 15


def _by_name(rows: list[dict]) -> dict[str, dict]:
    named: dict[str, dict] = {}
    for row in rows:
        name = Path(row["uri"]).name
        assert name not in named, f"{name} has two rows"
        named[name] = row
    return named


def test_folder_run_gives_every_bad_input_a_clear_row_and_unusual_photos_correct_media(
    tmp_path, scoreboard
):
    out = tmp_path / "out"
    summary = run_folder(str(FILES), str(out), Settings(workers=0))
    media, failures = read_rows(out, "media"), read_rows(out, "failures")
    _check(_by_name(media), _by_name(failures), EXPECTED)
    assert summary.files == len(EXPECTED)
    rotated = _by_name(media)["exif_rotated.jpg"]
    assert rotated["timestamp"] is not None  # its EXIF DateTimeOriginal was read
    garbage = _by_name(media)["exif_garbage_values.jpg"]
    assert garbage["timestamp"] is None  # '2024:13:45 99:99:99' is not a time
    score = account("bad-input corpus, folder run", [str(p) for p in FILES.iterdir()], out)
    scoreboard.record(score)
    assert (score.duplicates, score.losses) == (0, 0)


def test_stream_worker_sends_each_bad_input_to_failures_and_the_dlq(
    tansu, kafka_topic, tmp_path, scoreboard
):
    """Service mode: same outcomes, and each failures row has its dead letter."""
    topic = kafka_topic("bad-inputs", partitions=1)
    producer = kafka_io.make_producer(tansu.bootstrap)
    files = sorted(FILES.iterdir())
    events = [encode_upload(Upload(uri=p.as_uri(), deployment_id="cam-bad")) for p in files]
    kafka_io.wait_delivered([producer.send(topic, key=b"cam-bad", value=v) for v in events])
    producer.close()
    settings = Settings(
        kafka_bootstrap=tansu.bootstrap, uploads_topic=topic, dlq_topic=f"{topic}.dlq",
        consumer_group="g-bad-inputs", session_timeout_ms=TEST_SESSION_TIMEOUT_MS,
        batch_max_records=50, commit_interval_s=0.5, workers=0, metrics_port=0,
    )  # fmt: skip
    worker = StreamWorker(settings, str(tmp_path / "out"), build_pipeline(settings))
    worker.run(idle_exit_s=4)

    expected = EXPECTED
    failures = read_rows(tmp_path / "out", "failures")
    _check(_by_name(read_rows(tmp_path / "out", "media")), _by_name(failures), expected)
    dlq = kafka_io.read_topic(tansu.bootstrap, f"{topic}.dlq", len(failures), timeout_s=10)
    assert sorted(kafka_io.DeadLetterRecord.from_record(r).kind for r in dlq) == sorted(
        f["kind"] for f in failures
    )
    score = account(
        "bad-input corpus, stream worker + DLQ", [str(p) for p in files], tmp_path / "out"
    )
    scoreboard.record(score)
    assert (score.duplicates, score.losses) == (0, 0)


BOMB_PROBE = """
import resource, sys
from pathlib import Path
from trapline.pipelines.decode import decode_image
from trapline.pipelines.types import StageError
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(data, min_long_side=640, max_pixels=int(sys.argv[2]))
    print("decoded")
except StageError as error:
    print(error.kind)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("name", ["bomb.png", "bomb.jpg"])
@pytest.mark.parametrize("max_pixels", [80_000_000, 10**12])  # the setting, and no setting at all
def test_a_decompression_bomb_is_refused_before_its_pixels_are_allocated(name, max_pixels):
    """30,000 x 30,000 declared = 2.7 GB of RGB. Even with the project's limit lifted, Pillow's
    own bomb guard refuses it from the header. Peak memory grows by less than 20 MB."""
    result = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, str(FILES / name), str(max_pixels)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    kind, grown = result.stdout.split()
    assert kind == "too_large"
    assert int(grown) < 20 * 2**20, f"peak RSS grew {int(grown) / 2**20:.0f} MB decoding {name}"


def test_scan_and_pixel_bombs_each_end_in_a_failures_row_naming_the_file_and_the_limit(tmp_path):
    """Issue 37, items 3 and 7: a 65 KB JPEG repeating its last progressive scan 5,000 times
    (5 s of CPU if decoded) and a 0.56 MB RGBA PNG of 144 MP (1.8 GB if decoded) cost the run
    milliseconds; the ordinary progressive photo beside them is a media row."""
    photos = tmp_path / "cam-hostile"
    photos.mkdir()
    (photos / "scan_bomb.jpg").write_bytes(scan_bomb(1024, 768, 5_000))
    (photos / "pixel_bomb.png").write_bytes(pixel_bomb_png(12_000, 12_000))
    (photos / "ordinary_progressive.jpg").write_bytes(progressive_jpeg(1024, 768))
    started = time.perf_counter()
    run_folder(str(photos), str(tmp_path / "out"), Settings(workers=0))
    seconds = time.perf_counter() - started
    media = _by_name(read_rows(tmp_path / "out", "media"))
    failures = _by_name(read_rows(tmp_path / "out", "failures"))
    assert sorted(media) == ["ordinary_progressive.jpg"]
    scan, pixel = failures["scan_bomb.jpg"], failures["pixel_bomb.png"]
    assert (scan["stage"], scan["kind"]) == ("decode", "decode_budget")
    assert "scan_bomb.jpg" in scan["message"] and "limit of 100 scans" in scan["message"]
    assert (pixel["stage"], pixel["kind"]) == ("decode", "too_large")
    assert "pixel_bomb.png" in pixel["message"] and "80 MP limit" in pixel["message"]
    assert seconds < 30, f"the run took {seconds:.0f} s"  # start-up and table writes included


def test_a_144_mp_png_is_refused_before_its_pixels_are_allocated(tmp_path):
    """The review's pixel bomb at the default `max_image_pixels`: peak RSS grows < 20 MB."""
    path = tmp_path / "pixel_bomb.png"
    path.write_bytes(pixel_bomb_png(12_000, 12_000))
    result = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, str(path), str(Settings().max_image_pixels)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    kind, grown = result.stdout.split()
    assert kind == "too_large"
    assert int(grown) < 20 * 2**20, f"peak RSS grew {int(grown) / 2**20:.0f} MB"
