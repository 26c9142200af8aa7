"""Against a real S3 server (Ceph RGW): the source, the Delta tables and a whole run on s3:// URLs.

The stages are unchanged: `object_store.configure_fsspec` is the only S3-specific call, as in
`trapline run` and `serve`. The server starts once per session (`s3_fixtures.ceph_rgw`, ~2 s).
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import s3fs

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines import delta
from trapline.pipelines.flow import assemble
from trapline.pipelines.readers import read_table
from trapline.pipelines.source import list_media, read_bytes
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import MediaRef, MediaResult, StageError
from trapline.services.adapters import object_store
from trapline.services.adapters.object_store import S3Options
from trapline.services.run.folder import run_folder
from trapline.services.settings import Settings

# The real-server fixtures (ceph_rgw, s3_settings, s3, s3_bucket); tests/ is on sys.path.
pytest_plugins = ["support.s3_fixtures"]
MB = 2**20


MODELS = ModelNames("det", "1", "cls", "1")


def media_result(media_id: str) -> MediaResult:
    ref = MediaRef(uri=f"s3://photos/cam 1/{media_id}.jpg", deployment_id="cam 1")
    return MediaResult(ref, media_id, media_id.ljust(64, "0"), 4000, 3000, None, None, None, 1, [])


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


# --- Delta tables on S3 ---------------------------------------------------------------------


def media_rows(tag: str, rows: int = 3) -> pa.Table:
    """`rows` media rows of deployment 'cam 1' (a space: %-encoded in the partition folder)."""
    tables = assemble(
        [media_result(f"{tag}-{i}") for i in range(rows)], [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS
    )
    return tables.media


def test_delta_tables_on_s3_read_back_through_the_log_and_hold_app_versions(s3, s3_bucket):
    out = f"s3://{s3_bucket('results')}/results"
    table = delta.create_table(out, "media")
    delta.append(table, "media", media_rows("w1"), [delta.AppVersion("g:t:0", 41)])
    assert read_table(out, "media").column("media_id").to_pylist() == ["w1-0", "w1-1", "w1-2"]
    assert delta.app_version(delta.open_table(out, "media"), "g:t:0") == 41
    keys = s3.find(out.removeprefix("s3://") + "/media", refresh=True)
    assert any("deployment_id=cam%201" in k for k in keys)  # Hive folders, %-encoded
    assert any("/_delta_log/00000000000000000001.json" in k for k in keys)


def test_on_s3_a_stale_writer_of_the_same_app_id_is_refused_another_app_id_commits(s3, s3_bucket):
    """The fence the stream relies on, on the real gateway: conditional put (etag) makes the
    log's next version create-if-absent, and delta-rs refuses a commit whose app id a
    concurrent commit carried."""
    out = f"s3://{s3_bucket('results')}/results"
    delta.create_table(out, "media")
    zombie, owner, other = (delta.open_table(out, "media") for _ in range(3))
    delta.append(owner, "media", media_rows("owner"), [delta.AppVersion("g:t:0", 9)])
    with pytest.raises(delta.ConcurrentCommit):
        delta.append(zombie, "media", media_rows("zombie"), [delta.AppVersion("g:t:0", 9)])
    delta.append(other, "media", media_rows("other"), [delta.AppVersion("g:t:1", 4)])
    ids = read_table(out, "media").column("media_id").to_pylist()
    assert sorted(ids) == sorted(
        [f"owner-{i}" for i in range(3)] + [f"other-{i}" for i in range(3)]
    )


def _racing_commit(out: str, writer: str, start: threading.Barrier, outcome: dict) -> None:
    table = delta.open_table(out, "media")
    start.wait()  # every writer commits from the same snapshot at the same moment
    try:
        delta.append(table, "media", media_rows(writer, 1), [delta.AppVersion("g:t:0", 1)])
        outcome[writer] = True
    except delta.ConcurrentCommit:
        outcome[writer] = False
    except BaseException as error:  # reported by the test, from its own thread
        outcome[writer] = error


def test_of_racing_commits_of_one_app_id_on_s3_exactly_one_wins(s3, s3_bucket):
    out = f"s3://{s3_bucket('results')}/results"
    delta.create_table(out, "media")
    writers = 4
    start = threading.Barrier(writers)
    outcome: dict[str, bool | BaseException] = {}
    threads = [
        threading.Thread(target=_racing_commit, args=(out, f"w{i}", start, outcome))
        for i in range(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [o for o in outcome.values() if isinstance(o, BaseException)] == []
    winners = [writer for writer, won in outcome.items() if won is True]
    assert len(winners) == 1, outcome
    assert read_table(out, "media").column("media_id").to_pylist() == [f"{winners[0]}-0"]


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

    media = read_table("s3://results/run1", "media").to_pandas()
    failures = read_table("s3://results/run1", "failures").to_pandas()
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
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="trapline")  # the S3 options echo is at DEBUG
    options = object_store.configure_fsspec(s3_settings)
    out = f"s3://{s3_bucket('results')}/results"
    delta.append(delta.create_table(out, "media"), "media", media_rows("w"))
    assert read_table(out, "media").num_rows == 3

    shown = f"{options.masked()} {options!r} {options!s} {caplog.text}"
    assert "object storage" in caplog.text  # the start-up echo happened
    assert key not in shown and secret not in shown

    # Even botocore's DEBUG log never holds the secret (requests are signed with it, not sent).
    # It does hold the access key id (in each Authorization header): keep botocore at INFO.
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="botocore")
    s3.pipe(f"{s3_bucket('results')}/debug.bin", b"x")
    assert caplog.text and secret not in caplog.text
