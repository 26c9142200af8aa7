"""Folder runs append, skip what is committed, and resume after kill -9 (black box, the CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from support.photo_factory import jpeg_bytes

from trapline.pipelines.delta import open_table
from trapline.pipelines.readers import read_table


def make_card(root: Path, deployments: int, photos: int, start: int = 0) -> list[Path]:
    """`photos` distinct JPEGs per deployment, 3-frame bursts a minute apart, one corrupt each."""
    paths = []
    for d in range(deployments):
        folder = root / f"cam-{d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + photos):
            when = datetime(2024, 5, 1, 6) + timedelta(minutes=i // 3, seconds=i % 3)
            path = folder / f"IMG_{i:04d}.jpg"
            path.write_bytes(jpeg_bytes(320, 240, when=when, seed=d * 1000 + i))
            paths.append(path)
        broken = folder / f"broken-{start}.jpg"
        broken.write_bytes(jpeg_bytes(320, 240, seed=d)[:200])
        paths.append(broken)
    return paths


def trapline(*args: str, env: dict | None = None) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "trapline"), *args]  # the installed CLI
    return subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def run_to_end(*args: str, env: dict | None = None) -> dict:
    summary = Path(args[args.index("--json-summary") + 1])
    process = trapline(*args, env=env)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output
    return json.loads(summary.read_text())


def accounted(out: Path) -> list[str]:
    media = read_table(str(out), "media").column("uri").to_pylist()
    failed = read_table(str(out), "failures").column("uri").to_pylist()
    return media + failed


def test_the_same_folder_twice_adds_nothing_and_another_folder_appends(tmp_path):
    first = make_card(tmp_path / "card-1", deployments=2, photos=4)
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "card-1"), "--out", str(out), "--workers", "0"]
    summary = run_to_end(*args, "--json-summary", str(tmp_path / "s1.json"))
    assert summary["processed"] + summary["failed"] == len(first)
    version = open_table(str(out), "media").version()

    again = run_to_end(*args, "--json-summary", str(tmp_path / "s2.json"))
    assert again["already_done"] == len(first) and again["processed"] == again["failed"] == 0
    assert open_table(str(out), "media").version() == version  # not even an empty commit

    second = make_card(tmp_path / "card-2", deployments=2, photos=3, start=100)
    run_to_end("run", str(tmp_path / "card-2"), "--out", str(out), "--workers", "0",
               "--json-summary", str(tmp_path / "s3.json"))  # fmt: skip
    uris = accounted(out)
    assert sorted(uris) == sorted(str(p) for p in first + second)  # every file once, none lost


def test_a_folder_run_killed_with_sigkill_resumes_without_redoing_committed_work(tmp_path):
    photos = make_card(tmp_path / "card", deployments=3, photos=12)
    out = tmp_path / "out"
    env = {"TRAPLINE_FOLDER_COMMIT_EVERY": "4"}
    args = ["run", str(tmp_path / "card"), "--out", str(out), "--workers", "0"]
    process = trapline(*args, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a reader polls the tables while the run commits
        table = open_table(str(out), "media")
        if table is not None and table.version() >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = accounted(out)
    assert 0 < len(committed) < len(photos) and len(committed) == len(set(committed))

    summary = run_to_end(*args, "--json-summary", str(tmp_path / "s.json"), env=env)
    assert summary["already_done"] == len(committed)
    assert summary["processed"] + summary["failed"] == len(photos) - len(committed)
    uris = accounted(out)
    assert sorted(uris) == sorted(str(p) for p in photos)
    events = read_table(str(out), "events").column("event_id").to_pylist()
    assert len(events) == len(set(events))


def test_results_back_from_ray_hold_no_view_of_the_buffer_ray_deserialised():
    """Ray returns numpy arrays as read-only views of the buffer it deserialised (checked on
    Ray 2.60: `flags.owndata` False); held until their deployment's commit, each would keep its
    batch's whole buffer. The driver keeps copies (`owned_arrays`)."""
    import numpy as np

    from trapline.pipelines.flow import BatchOutput
    from trapline.pipelines.types import Detection, MediaRef, MediaResult
    from trapline.services.run.folder import owned_arrays

    store = np.arange(38, dtype=np.float32).tobytes()  # stands for a buffer Ray shares
    view = np.frombuffer(store, dtype=np.float32)
    box = Detection("animal", 0.9, (0.1, 0.1, 0.2, 0.2), logits=view)
    result = MediaResult(MediaRef("a.jpg", "cam"), "m", "s", 4, 3, None, None, None, 1, [box])
    owned_arrays(BatchOutput([result], []))
    assert box.logits.flags.owndata and box.logits is not view
    assert box.logits.tolist() == view.tolist()


def _card(root: Path, photos: int, spacing: timedelta) -> None:
    folder = root / "cam-0"
    folder.mkdir(parents=True)
    for i in range(photos):
        when = datetime(2024, 5, 1, 6) + i * spacing
        (folder / f"IMG_{i:04d}.jpg").write_bytes(jpeg_bytes(160, 120, when=when, seed=i))


def test_a_long_deployment_is_committed_as_it_goes_and_an_endless_burst_is_cut(tmp_path):
    """folder_commit_every bounds what a run holds per deployment: bursts are committed at an
    event boundary as photos come back; a burst longer than that (a time-lapse, every photo
    closer than sequence_gap_s) is cut, not held until the deployment ends."""
    from trapline.services.run.folder import run_folder
    from trapline.services.settings import Settings

    settings = Settings(workers=0, batch_size=4, folder_commit_every=8)
    for name, spacing in (("bursts", None), ("time-lapse", timedelta(seconds=2))):
        source, out = tmp_path / name, tmp_path / f"{name}-out"
        if spacing is None:
            make_card(source, deployments=1, photos=30)  # 3-frame bursts a minute apart
        else:
            _card(source, 30, spacing)
        run_folder(str(source), str(out), settings)
        media = read_table(str(out), "media", columns=["media_id", "event_id"]).to_pylist()
        assert len(media) == len({row["media_id"] for row in media}) == 30
        assert open_table(str(out), "media").version() >= 3, f"{name}: committed as it went"
        sizes = sorted(Counter(row["event_id"] for row in media).values())
        if spacing is None:  # cut at event boundaries only: every burst whole
            assert sizes == [3] * 10
        else:  # one endless burst, cut where a commit was due
            assert len(sizes) >= 3 and max(sizes) <= 8 + settings.batch_size, sizes


def test_a_copy_is_a_duplicate_across_commits_and_runs_but_not_across_deployments(tmp_path):
    """A folder run keeps a deployment's known ids only while it writes that deployment (they
    are forgotten once it is finished) and reads them again when a later run needs them: a copy
    of a photo is a duplicate whether it comes commits later, or in the next run; the same bytes
    in another camera's folder are that camera's photo."""
    from trapline.services.run.folder import run_folder
    from trapline.services.settings import Settings

    settings = Settings(workers=0, batch_size=4, folder_commit_every=8)
    source, out = tmp_path / "card", tmp_path / "out"
    make_card(source, deployments=2, photos=24)
    first = source / "cam-0" / "IMG_0000.jpg"
    (source / "cam-0" / "IMG_0900.jpg").write_bytes(first.read_bytes())  # commits later
    (source / "cam-1" / "IMG_0901.jpg").write_bytes(first.read_bytes())  # another camera
    run_folder(str(source), str(out), settings)
    (source / "cam-0" / "IMG_0902.jpg").write_bytes(first.read_bytes())  # the next run
    run_folder(str(source), str(out), settings)

    duplicates = {
        row["uri"].rsplit("/", 2)[-2] + "/" + row["uri"].rsplit("/", 1)[-1]
        for row in read_table(str(out), "failures", columns=["uri", "kind"]).to_pylist()
        if row["kind"] == "duplicate"
    }
    assert duplicates == {"cam-0/IMG_0900.jpg", "cam-0/IMG_0902.jpg"}
    media = read_table(str(out), "media", columns=["uri", "deployment_id"]).to_pylist()
    assert Counter(row["deployment_id"] for row in media) == {"cam-0": 24, "cam-1": 25}
