"""Against a real S3 server (Ceph RGW): the source, the sink and a whole run on s3:// URLs.

The stages are unchanged: `object_store.configure_fsspec` is the only S3-specific call, as in
`trapline run` and `serve`. The server starts once per session (`s3_fixtures.ceph_rgw`, ~2 s).
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import s3fs

from trapline.pipelines.segment_log import Commit, SegmentLog
from trapline.pipelines.sinks import ParquetSink, create_if_absent, put_if_absent
from trapline.pipelines.source import list_media, read_bytes
from trapline.pipelines.types import StageError
from trapline.services import object_store
from trapline.services.object_store import S3Options
from trapline.services.runner import run_folder
from trapline.services.settings import Settings

# The real-server fixtures (ceph_rgw, s3_settings, s3, s3_bucket); tests/ is on sys.path.
pytest_plugins = ["s3_fixtures"]
MB = 2**20


def tagged_table(writer: str, rows: int = 3) -> pa.Table:
    return pa.table({
        "media_id": [f"{writer}-{i}" for i in range(rows)], "writer": [writer] * rows,
        "deployment_id": ["cam 1"] * rows, "timestamp": pa.array([None] * rows, pa.timestamp("us", "UTC")),
    })  # fmt: skip


# --- options: no server needed ---------------------------------------------------------------


def test_explicit_settings_win_over_the_aws_environment():
    env = {"AWS_ENDPOINT_URL": "http://env:9000", "AWS_REGION": "eu-west-3",
           "AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "ENVSECRET"}  # fmt: skip
    given = SimpleNamespace(
        s3_endpoint_url="http://rgw:7480", s3_access_key_id="K", s3_secret_access_key="S"
    )
    options = S3Options.resolve(given, env).storage_options()
    assert options["endpoint_url"] == "http://rgw:7480"
    assert (options["key"], options["secret"]) == ("K", "S")
    assert options["client_kwargs"] == {"region_name": "eu-west-3"}  # unset in settings: from env
    assert options["config_kwargs"]["s3"] == {"addressing_style": "path"}


def test_keys_from_the_environment_are_left_to_botocore_and_aws_itself_keeps_its_defaults():
    options = S3Options.resolve(None, {"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"})
    assert options.storage_options() == {}  # botocore reads the variables (and IRSA, profiles)
    assert options.masked()["credentials"].startswith("environment")


def test_s3_verify_accepts_booleans_spelt_as_text_and_refuses_a_missing_ca_bundle(tmp_path):
    assert S3Options.resolve({"s3_verify": "false"}, {}).storage_options() == {
        "client_kwargs": {"verify": False}
    }
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    assert S3Options.resolve({"s3_verify": str(bundle)}, {}).verify == str(bundle)
    with pytest.raises(ValueError, match="no such CA bundle"):
        S3Options.resolve({"s3_verify": str(tmp_path / "missing.pem")}, {})


def test_half_a_key_pair_is_refused_naming_the_missing_setting():
    with pytest.raises(ValueError, match="s3_secret_access_key is not"):
        S3Options.resolve({"s3_access_key_id": "K"}, {})


def test_storage_options_are_only_for_s3_urls():
    settings = {"s3_endpoint_url": "http://rgw:7480"}
    assert (
        object_store.storage_options_for("s3://b/k", settings)["endpoint_url"] == "http://rgw:7480"
    )
    assert object_store.storage_options_for("/data/photos", settings) == {}


# --- source ------------------------------------------------------------------------------------


def test_list_media_on_a_bucket_prefix_takes_the_deployment_from_the_first_folder(
    s3, s3_bucket, make_jpeg
):
    bucket = s3_bucket("photos")
    photos = {
        "card/cam-a/IMG_0001.JPG": make_jpeg(64, 48, seed=1),
        "card/cam-a/IMG_0002.jpg": make_jpeg(64, 48, seed=2),
        "card/cam-b/night/IMG_0003.jpeg": make_jpeg(64, 48, seed=3),
        "card/loose.jpg": make_jpeg(64, 48, seed=4),
    }
    others = {
        "card/notes.txt": b"field notes",
        "card/cam-a/.DS_Store": b"\0",
        "elsewhere/IMG_9.jpg": b"x",
    }
    for key, data in {**photos, **others}.items():
        s3.pipe(f"{bucket}/{key}", data)

    listing = list_media(f"s3://{bucket}/card")

    assert sorted((ref.uri, ref.deployment_id) for ref in listing.refs) == [
        (f"s3://{bucket}/card/cam-a/IMG_0001.JPG", "cam-a"),
        (f"s3://{bucket}/card/cam-a/IMG_0002.jpg", "cam-a"),
        (f"s3://{bucket}/card/cam-b/night/IMG_0003.jpeg", "cam-b"),
        (f"s3://{bucket}/card/loose.jpg", "card"),
    ]
    assert [f.uri for f in listing.unsupported] == [f"s3://{bucket}/card/notes.txt"]
    assert listing.hidden == 1
    for ref in listing.refs:
        assert read_bytes(ref.uri, 10 * MB) == photos[ref.uri.split("/", 3)[3]]


@pytest.mark.parametrize("where", ["missing object", "missing bucket"])
def test_read_bytes_of_a_missing_object_is_a_missing_stage_error(s3, s3_bucket, where):
    uri = (
        f"s3://{s3_bucket('photos')}/card/nope.jpg"
        if where == "missing object"
        else "s3://no-such-bucket-trapline/a.jpg"
    )
    with pytest.raises(StageError) as refused:
        read_bytes(uri, 10 * MB)
    assert refused.value.kind == "missing" and uri in refused.value.message


def test_read_bytes_refuses_an_object_above_the_size_limit(s3, s3_bucket):
    uri = f"s3://{s3_bucket('photos')}/big.jpg"
    s3.pipe(uri, b"\xff" * 2048)
    with pytest.raises(StageError) as refused:
        read_bytes(uri, 1024)
    assert refused.value.kind == "too_large"


# --- sink --------------------------------------------------------------------------------------


def test_sink_write_leaves_hive_partitioned_parts_that_pandas_and_pyarrow_read_back_from_s3(
    s3, s3_bucket, s3_settings, ceph_rgw, monkeypatch
):
    out = f"s3://{s3_bucket('results')}/results"
    sink = ParquetSink(out)
    [path] = sink.write("media", tagged_table("w1"), "run-1")

    leaf = f"{out}/media/deployment=cam%201/date=unknown"
    assert [Path(p).name for p in s3.ls(leaf, refresh=True)] == [
        "part-run-1.parquet"
    ]  # no temp left
    assert path == f"{leaf}/part-run-1.parquet".removeprefix("s3://")
    # pandas (pyarrow engine) uses fsspec only when given storage_options, else pyarrow's S3
    options = object_store.storage_options_for(out, s3_settings)
    frame = pd.read_parquet(f"{out}/media", storage_options=options)
    assert frame["writer"].tolist() == ["w1"] * 3
    assert frame["deployment"].astype(str).tolist() == ["cam 1"] * 3  # the folder, %-decoded
    # pyarrow's own S3 client needs the checksum variables against RGW (set by configure_fsspec)
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    arrow_fs = pafs.S3FileSystem(
        access_key=ceph_rgw.access_key, secret_key=ceph_rgw.secret_key,
        endpoint_override=ceph_rgw.endpoint_url, region=ceph_rgw.region,
    )  # fmt: skip
    table = pq.read_table(out.removeprefix("s3://") + "/media", filesystem=arrow_fs)
    assert table.column("media_id").to_pylist() == ["w1-0", "w1-1", "w1-2"]
    assert table.schema.metadata[b"trapline.table"] == b"media"


_CREATE_RAISED = (
    "create_if_absent raised {error!r} for an existing object instead of returning False: RGW "
    "16.2 answers 412 without <Condition>, which s3fs does not map to FileExistsError; "
    "it should use sinks.put_if_absent (or is_precondition_failed)"
)


def _race(path: str, writer: str, start: threading.Barrier, outcome: dict) -> None:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)  # a client of its own, as a worker has
    start.wait()  # all writers send their PutObject at the same moment
    try:
        outcome[writer] = create_if_absent(fs, path, writer.encode())
    except BaseException as error:  # reported by the test, from its own thread
        outcome[writer] = error


def test_of_racing_creates_of_one_object_exactly_one_wins_and_its_content_stays(s3, s3_bucket):
    """The conditional put is real: writers released together, per name one True, and the
    stored object is the winner's (a check-then-put would let several 'win' and overwrite)."""
    bucket = s3_bucket("results")
    writers = 4
    for index in range(6):
        path = f"{bucket}/_segments/t/00000/{index:020d}.claim.json"
        start = threading.Barrier(writers)
        outcome: dict[str, bool | BaseException] = {}
        threads = [
            threading.Thread(target=_race, args=(path, f"w{i}", start, outcome))
            for i in range(writers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        errors = [error for error in outcome.values() if isinstance(error, BaseException)]
        if errors:
            pytest.fail(_CREATE_RAISED.format(error=errors[0]))
        winners = [writer for writer, won in outcome.items() if won is True]
        assert len(outcome) == writers and len(winners) == 1, outcome
        assert s3.cat(path) == winners[0].encode()


def test_segment_log_on_s3_fixes_a_range_for_the_first_claimer_only(s3, s3_bucket):
    log = SegmentLog(s3, f"{s3_bucket('results')}/results")
    assert log.claim("uploads", 3, 100, 149) == 149
    assert log.claim("uploads", 3, 100, 180) == 149  # a zombie adopts the first claim
    assert log.open_claim("uploads", 3, 100) == 149
    assert log.commit("uploads", 3, Commit(100, 149, ["media/x.parquet"], ["m1"]))
    assert not log.commit("uploads", 3, Commit(100, 149, ["media/y.parquet"], ["m2"]))
    assert log.commits("uploads", 3) == [Commit(100, 149, ["media/x.parquet"], ["m1"])]


def test_put_if_absent_stays_conditional_for_payloads_above_the_upload_block_size(s3, s3_bucket):
    # RGW 16.2 ignores If-None-Match on CompleteMultipartUpload: a multipart "create" would
    # overwrite. put_if_absent always sends one PutObject, whatever the filesystem's block size.
    fs = s3fs.S3FileSystem(
        **s3.storage_options, default_block_size=5 * MB, skip_instance_cache=True
    )
    path = f"{s3_bucket('results')}/big.bin"
    assert put_if_absent(fs, path, b"a" * (6 * MB)) is True
    assert put_if_absent(fs, path, b"b" * (6 * MB)) is False
    assert fs.cat_file(path, start=0, end=4) == b"aaaa"


def test_https_with_the_gateways_ca_bundle_and_rgw_compatible_checksums(ceph_rgw, s3_settings):
    settings = {
        **vars(s3_settings),
        "s3_endpoint_url": ceph_rgw.tls_endpoint_url,
        "s3_verify": str(ceph_rgw.ca_file),
    }
    fs = s3fs.S3FileSystem(
        **S3Options.resolve(settings, {}).storage_options(), skip_instance_cache=True
    )
    bucket = f"tls-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    fs.pipe(
        f"{bucket}/a.bin", b"over TLS"
    )  # botocore's default aws-chunked checksums would 400 here
    with fs.open(f"{bucket}/b.bin", "wb", block_size=5 * MB) as handle:
        handle.write(b"m" * (6 * MB))  # multipart upload
    assert fs.cat(f"{bucket}/a.bin") == b"over TLS" and fs.size(f"{bucket}/b.bin") == 6 * MB
    # Without the CA bundle the self-signed certificate is refused (verify defaults to True).
    untrusted_options = S3Options.resolve({**settings, "s3_verify": True}, {}).storage_options()
    untrusted_options["config_kwargs"]["retries"] = {"max_attempts": 1}
    untrusted = s3fs.S3FileSystem(**untrusted_options, skip_instance_cache=True)
    untrusted.retries = 1  # s3fs's own retry loop
    with pytest.raises(Exception, match="(?i)certificate"):
        untrusted.ls(bucket)


# --- whole run -----------------------------------------------------------------------------------


def test_run_folder_from_a_bucket_prefix_to_a_bucket_accounts_for_every_object(
    s3, s3_settings, make_jpeg
):
    defaults = Settings(workers=0)
    for model in (defaults.detector_model, defaults.classifier_model):
        if not Path(model).is_file():
            pytest.skip(f"demo model {model} is missing (models/demo/train.py makes it)")
    s3.makedirs("photos", exist_ok=True)
    s3.makedirs("results", exist_ok=True)
    objects = {  # distinct bytes each: identical photos would be one media_id (a duplicate)
        f"card/cam-{'ab'[index % 2]}/IMG_{index:04d}.JPG": make_jpeg(320, 240, seed=index)
        for index in range(6)
    }
    objects["card/cam-a/broken.jpg"] = make_jpeg(320, 240)[:300]  # truncated: a failures row
    objects["card/cam-b/readme.txt"] = b"not a photo"
    for key, data in objects.items():
        s3.pipe(f"photos/{key}", data)

    settings = Settings(workers=0, **vars(s3_settings))  # run_folder configures fsspec from it
    summary = run_folder("s3://photos/card", "s3://results/run1", settings)

    options = object_store.storage_options_for("s3://results", s3_settings)
    media = pd.read_parquet("s3://results/run1/media", storage_options=options)
    failures = pd.read_parquet("s3://results/run1/failures", storage_options=options)
    assert len(media) + len(failures) == len(objects) == summary.files
    assert sorted(media["uri"].tolist() + failures["uri"].tolist()) == sorted(
        f"s3://photos/{k}" for k in objects
    )
    assert set(media["deployment_id"]) == {"cam-a", "cam-b"}
    assert set(failures["uri"]) == {
        "s3://photos/card/cam-a/broken.jpg",
        "s3://photos/card/cam-b/readme.txt",
    }


# --- secrets -----------------------------------------------------------------------------------


def test_keys_never_appear_in_masked_output_or_logs(ceph_rgw, s3_settings, s3, s3_bucket, caplog):
    key, secret = ceph_rgw.access_key, ceph_rgw.secret_key
    caplog.set_level(logging.DEBUG, logger="trapline")
    caplog.set_level(logging.INFO)
    options = object_store.configure_fsspec(s3_settings)
    sink = ParquetSink(f"s3://{s3_bucket('results')}/results")
    sink.write("media", tagged_table("w"), "run-1")
    assert (
        sink.file_metadata(sink.part_files("media")[0].removeprefix(sink.root + "/"))["table"]
        == "media"
    )

    shown = f"{options.masked()} {options!r} {options!s} {caplog.text}"
    assert "object storage" in caplog.text  # the start-up echo happened
    assert key not in shown and secret not in shown

    # Even botocore's DEBUG log never holds the secret (requests are signed with it, not sent).
    # It does hold the access key id (in each Authorization header): keep botocore at INFO.
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="botocore")
    s3.pipe(f"{s3_bucket('results')}/debug.bin", b"x")
    assert caplog.text and secret not in caplog.text
