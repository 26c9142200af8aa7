"""A folder run's commits against the ways issue 36 found them doubling photos: two runs of one
camera under different source strings committing at once, and a folder run into a stream's
tables."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
from support.memory_workers import worker

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines import delta
from trapline.pipelines.flow import assemble
from trapline.pipelines.readers import read_table
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import MediaRef, MediaResult
from trapline.services.run.delta_sink import Batch, DeltaSink, SinkOptions, deployment_app_id
from trapline.services.run.folder import run_folder
from trapline.services.run.folder_tables import StreamTables
from trapline.services.settings import Settings

MODELS = ModelNames("det", "1", "cls", "2")


def photos(deployment: str, names: list[str]):
    results = [
        MediaResult(
            MediaRef(uri=f"/card/{deployment}/{name}.jpg", deployment_id=deployment),
            name,
            name * 4,
            640,
            480,
            datetime(2024, 6, 1, 22, index, 0),
            "Make",
            "Model",
            123,
            [],
        )  # fmt: skip
        for index, name in enumerate(names)
    ]
    return assemble(results, [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS)


def test_two_runs_committing_one_camera_at_once_write_each_photo_once(tmp_path, monkeypatch):
    """`photos` and `./photos` (or two card dumps of one camera) got different application ids,
    so both runs' commits landed, each after filtering against a table the other had not yet
    written: every photo twice. Both now carry the deployment's id: delta-rs refuses the second
    commit, which filters again on the new snapshot."""
    out = str(tmp_path / "out")
    delta.create_table(out, "observations")
    both_filtered = threading.Barrier(2, timeout=60)
    real_append = delta.append
    waited: set[int] = set()

    def append_together(table, name, *args, **kwargs):
        if threading.get_ident() not in waited:  # each run's first commit: both filtered
            waited.add(threading.get_ident())
            both_filtered.wait()
        return real_append(table, name, *args, **kwargs)

    monkeypatch.setattr(delta, "append", append_together)
    errors = []

    def run() -> None:
        try:
            sink = DeltaSink(out, SinkOptions(Settings().stage_options()), MODELS, ())
            batch = Batch(deployment_app_id("cam-07"), [], [])
            sink.write([batch], {batch.app: photos("cam-07", ["a", "b", "c"])})
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    runs = [threading.Thread(target=run) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join()
    assert not errors
    for name, key in (("media", "media_id"), ("events", "event_id")):
        ids = read_table(out, name, columns=[key]).column(key).to_pylist()
        assert len(ids) == len(set(ids)) == 3, name  # three photos, a minute apart: 3 events


def test_a_folder_run_into_a_streams_tables_is_refused_with_the_way_out(
    uploads, tmp_path, pipeline
):
    out = tmp_path / "out"
    worker(uploads, out, pipeline).run(idle_exit_s=0.5)  # a stream worker of group "g"
    before = len(read_table(str(out), "media"))
    with pytest.raises(StreamTables, match=r"consumer group g\b.*another --out.*trapline submit"):
        run_folder(str(tmp_path / "card"), str(out), Settings(workers=0))
    assert len(read_table(str(out), "media")) == before
