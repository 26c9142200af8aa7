"""Upload messages: what is accepted, what is refused (and how the refusal reads), fuzzed."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.upload_checks import SOURCE, assert_well_formed

from trapline.pipelines.uploads import (
    MAX_ID_CHARS,
    MAX_URI_CHARS,
    SCHEMA_V1,
    ParseResult,
    Upload,
    compile_deployment_pattern,
    encode_upload,
    parse_upload,
    record_source,
    split_source,
)

SHA = "ab" * 32


def v1(**fields: object) -> dict:
    event = {
        "schema": SCHEMA_V1,
        "media_id": "IMG_0001",
        "uri": "s3://traps/cam-07/IMG_0001.JPG",
        "deployment_id": "cam-07",
        "timestamp": "2024-05-01T10:00:00+02:00",
        "sha256": SHA,
        "uploaded_at": "2024-05-02T08:00:00Z",
        "attributes": {"original_name": "DCIM/IMG_0001.JPG"},
    }
    event.update(fields)
    return {k: v for k, v in event.items() if v is not MISSING}


MISSING = object()


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def only_event(result: ParseResult):
    assert result.failures == [], [f.message for f in result.failures]
    assert len(result.events) == 1
    return result.events[0]


def only_failure(result: ParseResult, raw: bytes | None, kind: str):
    assert result.events == []
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert (failure.stage, failure.kind) == ("event", kind), failure.message
    assert failure.raw_event == raw
    assert failure.source == SOURCE
    assert failure.message.startswith(f"upload message {SOURCE}: ")
    return failure


def s3_record(
    key: str, name: str = "ObjectCreated:Put", bucket: str = "traps", **extra: object
) -> dict:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "eventTime": "2024-05-02T08:00:00.123Z",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 12345, "eTag": "0123"}},
        **extra,
    }


# -- trapline.upload/1: accepted ---------------------------------------------------------------


def test_full_v1_event_becomes_media_ref_with_source_and_upload_time():
    raw = encode(v1(sha256=SHA.upper()))
    event = only_event(parse_upload(raw, source=SOURCE, key=b"cam-07"))
    ref = event.ref
    assert (ref.uri, ref.deployment_id, ref.media_id, ref.source) == (
        "s3://traps/cam-07/IMG_0001.JPG", "cam-07", "IMG_0001", SOURCE,
    )  # fmt: skip
    assert ref.timestamp == datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
    assert ref.timestamp.utcoffset() == timedelta(hours=2)  # the camera's offset is kept
    assert event.uploaded_at == datetime(2024, 5, 2, 8, 0, tzinfo=timezone.utc)
    assert event.sha256 == SHA  # normalised to lowercase
    assert event.attributes == {"original_name": "DCIM/IMG_0001.JPG"}


def test_optional_fields_may_be_null_or_absent():
    raw = encode(v1(media_id=None, timestamp=None, sha256=MISSING, attributes=MISSING))
    event = only_event(parse_upload(raw, source=SOURCE))
    assert (event.ref.media_id, event.ref.timestamp, event.sha256, event.attributes) == (
        None,
        None,
        None,
        {},
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        (
            "2024-05-01T10:00:00.123456789+00:00",
            datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone.utc),
        ),
        ("2024-05-01 10:00+0530", datetime(2024, 5, 1, 4, 30, tzinfo=timezone.utc)),
        ("2024-05-01T10:00:00-03", datetime(2024, 5, 1, 13, tzinfo=timezone.utc)),
    ],
)
def test_iso_timestamps_with_any_offset_form_are_accepted(text, expected):
    event = only_event(parse_upload(encode(v1(timestamp=text)), source=SOURCE))
    assert event.ref.timestamp == expected


def test_unknown_extra_fields_are_tolerated_for_forward_compatibility():
    only_event(parse_upload(encode(v1(camera_serial="X1")), source=SOURCE))


def test_ids_and_uri_at_their_length_limits_are_accepted():
    long_id = "d" * MAX_ID_CHARS
    uri = "s3://b/" + "k" * (MAX_URI_CHARS - len("s3://b/.jpg")) + ".jpg"
    event = only_event(
        parse_upload(
            encode(v1(deployment_id=long_id, media_id=long_id, uri=uri)), source=SOURCE
        )
    )
    assert event.ref.deployment_id == long_id


def test_encode_then_parse_round_trips():
    sent = Upload(
        uri="file:///data/cam 1/IMG_0001.JPG", deployment_id="cam-1", media_id=SHA, sha256=SHA,
        timestamp=datetime(2024, 5, 1, 10, tzinfo=timezone(timedelta(hours=-5))),
        attributes={"original_name": "cam 1/IMG_0001.JPG", "empty": ""},
    )  # fmt: skip
    event = only_event(parse_upload(encode_upload(sent), source=SOURCE, key=b"cam-1"))
    assert (event.ref.uri, event.ref.deployment_id, event.ref.media_id) == (sent.uri, "cam-1", SHA)
    assert event.ref.timestamp == sent.timestamp
    assert event.uploaded_at == sent.uploaded_at
    assert event.attributes == dict(sent.attributes)


def test_encode_refuses_what_a_consumer_would_refuse():
    with pytest.raises(ValueError, match="deployment_id"):
        encode_upload(Upload(uri="s3://b/k.jpg", deployment_id="cam 1"))
    with pytest.raises(ValueError, match="no UTC offset"):
        encode_upload(
            Upload(uri="s3://b/k.jpg", deployment_id="c", timestamp=datetime(2024, 5, 1))
        )


def test_source_helpers_round_trip_topic_names_with_dots():
    assert split_source(record_source("trapline.uploads", 3, 17)) == ("trapline.uploads", 3, 17)


# -- trapline.upload/1: refused ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, kind",
    [
        (None, "empty_event"),
        (b"", "empty_event"),
        (b"\xff\xfe{}", "malformed_json"),
        (b'{"schema": ', "malformed_json"),
        (b'{"schema": "trapline.upload/1", "schema": "x"}', "malformed_json"),  # duplicate key
        (b'{"x": NaN}', "malformed_json"),
        (b"[" * 50_000 + b"]" * 50_000, "malformed_json"),  # deeper than the parser's stack
        (b"[1, 2]", "unknown_schema"),
        (b'"trapline.upload/1"', "unknown_schema"),
        (b'{"media_id": "x"}', "unknown_schema"),
        (encode(v1(schema="trapline.upload/2")), "unknown_schema"),
        (b'{"a": "' + b"x" * 1_000_001 + b'"}', "too_large"),
    ],
)
def test_unreadable_messages_become_failures_with_the_original_bytes(raw, kind):
    failure = only_failure(parse_upload(raw, source=SOURCE), raw, kind)
    assert failure.uri == SOURCE  # no photo known: the failures row names the message


@pytest.mark.parametrize(
    "change, field",
    [
        ({"uri": MISSING}, "uri"),
        ({"deployment_id": MISSING}, "deployment_id"),
        ({"uploaded_at": MISSING}, "uploaded_at"),
        ({"uri": 42}, "uri"),
        ({"uri": "s3://b/" + "k" * MAX_URI_CHARS}, "uri"),
        ({"uri": "/data/IMG_0001.JPG"}, "uri"),  # no scheme
        ({"uri": "http://169.254.169.254/latest"}, "uri"),  # not an allowed scheme
        ({"uri": "file://host/share/a.jpg"}, "uri"),
        ({"uri": "s3://bucket-only"}, "uri"),
        ({"uri": "s3://b/folder/"}, "uri"),
        ({"uri": "s3://b/a\nb.jpg"}, "uri"),
        ({"deployment_id": "cam/07"}, "deployment_id"),
        ({"deployment_id": ".."}, "deployment_id"),
        ({"deployment_id": "cam 07"}, "deployment_id"),
        ({"deployment_id": ""}, "deployment_id"),
        ({"deployment_id": "d" * (MAX_ID_CHARS + 1)}, "deployment_id"),
        ({"deployment_id": ["cam"]}, "deployment_id"),
        ({"media_id": "a/../b"}, "media_id"),
        ({"media_id": 7}, "media_id"),
        ({"timestamp": "2024-05-01T10:00:00"}, "timestamp"),  # naive: an error, not a guess
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": "2024-13-01T10:00:00Z"}, "timestamp"),
        ({"timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp"),  # beyond datetime in UTC
        ({"timestamp": 1714550400}, "timestamp"),
        ({"uploaded_at": "2024-05-02T08:00:00"}, "uploaded_at"),
        ({"uploaded_at": None}, "uploaded_at"),
        ({"sha256": "abc"}, "sha256"),
        ({"sha256": "g" * 64}, "sha256"),
        ({"attributes": ["a"]}, "attributes"),
        ({"attributes": {"n": 1}}, "attributes.n"),
        ({"attributes": {f"k{i}": "v" for i in range(65)}}, "attributes"),
        ({"attributes": {"n": "\ud800"}}, "attributes.n"),  # lone surrogate: not encodable
    ],
)
def test_invalid_fields_are_refused_with_a_message_naming_the_field(change, field):
    raw = encode(v1(**change))
    failure = only_failure(parse_upload(raw, source=SOURCE), raw, "invalid_field")
    assert f"'{field}'" in failure.message


def test_naive_timestamp_message_says_how_to_fix_it():
    raw = encode(v1(timestamp="2024-05-01T10:00:00"))
    message = only_failure(parse_upload(raw, source=SOURCE), raw, "invalid_field").message
    assert "no UTC offset" in message and "null" in message


def test_failure_after_the_uri_names_the_photo():
    raw = encode(v1(sha256="nope"))
    failure = only_failure(parse_upload(raw, source=SOURCE), raw, "invalid_field")
    assert (failure.uri, failure.deployment_id, failure.media_id) == (
        "s3://traps/cam-07/IMG_0001.JPG",
        "cam-07",
        "IMG_0001",
    )


def test_message_key_must_be_the_deployment_when_given():
    raw = encode(v1())
    only_failure(parse_upload(raw, source=SOURCE, key=b"cam-08"), raw, "key_mismatch")
    only_event(parse_upload(raw, source=SOURCE, key=None))


def test_allowed_schemes_are_configurable():
    raw = encode(v1(uri="memory://photos/IMG_0001.JPG"))
    only_failure(parse_upload(raw, source=SOURCE), raw, "invalid_field")
    only_event(parse_upload(raw, source=SOURCE, allowed_schemes={"memory"}))


# -- S3 / MinIO bucket notifications -----------------------------------------------------------


def test_s3_object_created_record_becomes_ref_with_decoded_key_and_deployment():
    raw = encode({"Records": [s3_record("cam-07/2024/IMG+0001+%2B%C3%A9.JPG")]})
    event = only_event(parse_upload(raw, source=SOURCE, key=b"anything"))
    assert event.ref.uri == "s3://traps/cam-07/2024/IMG 0001 +é.JPG"
    assert (event.ref.deployment_id, event.ref.media_id, event.ref.source) == (
        "cam-07",
        None,
        SOURCE,
    )
    assert event.uploaded_at == datetime(2024, 5, 2, 8, 0, 0, 123000, tzinfo=timezone.utc)


def test_minio_notification_with_s3_prefixed_event_name_is_accepted():
    raw = encode({
        "EventName": "s3:ObjectCreated:CompleteMultipartUpload",
        "Key": "traps/cam-07/IMG_0001.JPG",
        "Records": [s3_record("cam-07/IMG_0001.JPG", name="s3:ObjectCreated:CompleteMultipartUpload")],
    })  # fmt: skip
    assert only_event(parse_upload(raw, source=SOURCE)).ref.deployment_id == "cam-07"


def test_deployment_pattern_is_configurable():
    raw = encode({"Records": [s3_record("projects/p1/deployments/D-12/IMG_0001.JPG")]})
    pattern = r"deployments/(?P<deployment>[^/]+)/"
    event = only_event(parse_upload(raw, source=SOURCE, deployment_pattern=pattern))
    assert event.ref.deployment_id == "D-12"


def test_key_outside_the_pattern_is_refused_and_names_the_object():
    raw = encode({"Records": [s3_record("IMG_0001.JPG")]})
    failure = only_failure(parse_upload(raw, source=SOURCE), raw, "no_deployment")
    assert failure.uri == "s3://traps/IMG_0001.JPG"
    assert "IMG_0001.JPG" in failure.message and "pattern" in failure.message


def test_mixed_records_give_refs_failures_and_reported_ignores():
    raw = encode({
        "Records": [
            s3_record("cam-1/a.jpg"),
            s3_record("cam-1/b.jpg", name="ObjectRemoved:Delete"),
            s3_record("cam-1/folder/"),
            s3_record("cam 2/c.jpg"),  # deployment is not a safe id
            {"eventName": "ObjectCreated:Put"},  # no s3 object
            s3_record("cam-3/d.jpg", name="s3:ObjectCreated:Copy"),
        ]
    })  # fmt: skip
    result = parse_upload(raw, source=SOURCE)
    assert [e.ref.uri for e in result.events] == [
        "s3://traps/cam-1/a.jpg",
        "s3://traps/cam-3/d.jpg",
    ]
    assert len(result.ignored) == 2
    assert "ObjectRemoved:Delete" in result.ignored[0] and "folder marker" in result.ignored[1]
    assert [f.kind for f in result.failures] == ["invalid_field", "invalid_field"]
    assert (
        "Records[3]" in result.failures[0].message and "Records[4].s3" in result.failures[1].message
    )
    assert all(f.raw_event == raw for f in result.failures)


def test_s3_test_event_is_ignored_not_failed():
    raw = encode({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "traps"})
    result = parse_upload(raw, source=SOURCE)
    assert (result.events, result.failures, len(result.ignored)) == ([], [], 1)


def test_empty_records_list_is_refused():
    raw = encode({"Records": []})
    only_failure(parse_upload(raw, source=SOURCE), raw, "invalid_field")


def test_deployment_pattern_without_the_named_group_is_a_configuration_error():
    with pytest.raises(ValueError, match="named group 'deployment'"):
        compile_deployment_pattern(r"^([^/]+)/")
    with pytest.raises(ValueError, match="not a regular expression"):
        parse_upload(b"{}", deployment_pattern="(?P<deployment>")


# -- fuzz: never raise, always refs or failures ------------------------------------------------




json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_never_raise(raw):
    assert_well_formed(parse_upload(raw, source=SOURCE), raw)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["schema", "Records", "uri", "Event", "x"]) | st.text(max_size=10),
        json_values,
        max_size=6,
    )
)
def test_fuzz_arbitrary_json_objects_never_raise(document):
    raw = encode(document)
    assert_well_formed(parse_upload(raw, source=SOURCE), raw)


V1_FIELDS = ["media_id", "uri", "deployment_id", "timestamp", "sha256", "uploaded_at", "attributes"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(V1_FIELDS), json_values, st.binary(max_size=8) | st.none())
def test_fuzz_one_field_of_a_valid_event_replaced(field, value, key):
    raw = encode(v1(**{field: value}))
    result = parse_upload(raw, source=SOURCE, key=key)
    assert_well_formed(result, raw)
    assert len(result.events) + len(result.failures) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "eventName": st.sampled_from(["ObjectCreated:Put", "s3:ObjectRemoved:Delete"]) | json_values,
    "s3": st.fixed_dictionaries({
        "bucket": st.fixed_dictionaries({"name": st.sampled_from(["traps"]) | json_values}),
        "object": st.fixed_dictionaries({"key": st.text(max_size=30) | json_values}),
    }) | json_values,
    "eventTime": st.sampled_from(["2024-05-02T08:00:00Z"]) | json_values,
}), min_size=1, max_size=4))  # fmt: skip
def test_fuzz_s3_records_never_raise(records):
    raw = encode({"Records": records})
    result = parse_upload(raw, source=SOURCE)
    assert_well_formed(result, raw)
    assert len(result.events) + len(result.failures) + len(result.ignored) == len(records)


ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,30}", fullmatch=True)
aware = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    ids,
    st.none() | ids,
    st.none() | aware,
    aware,
    st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=3),
)
def test_fuzz_valid_events_round_trip(deployment, media_id, timestamp, uploaded_at, attributes):
    sent = Upload(
        uri=f"s3://traps/{deployment}/x.jpg", deployment_id=deployment, media_id=media_id,
        timestamp=timestamp, uploaded_at=uploaded_at, attributes=attributes,
    )  # fmt: skip
    try:
        raw = encode_upload(sent)
    except ValueError:
        assert any(
            "\ud800" <= c <= "\udfff" for c in "".join(attributes) + "".join(attributes.values())
        )
        return
    event = only_event(parse_upload(raw, source=SOURCE, key=deployment.encode()))
    assert (event.ref.deployment_id, event.ref.media_id) == (deployment, media_id)
    assert event.ref.timestamp == timestamp and event.uploaded_at == uploaded_at
    assert event.attributes == attributes


JPEG_WITH_SCRIPT = (
    b"\xff\xd8\xff\xfe\x00\x24<script>alert(document.cookie)</script>"
    b"\xff\xd9"
)  # a JPEG comment segment holding a script: a browser told "text/html" would run it


@pytest.mark.parametrize("name", ["trap.html", "trap.svg", "trap.JPG.htm", "trap", "trap.gif"])
def test_a_photo_named_as_something_else_is_refused_at_parse_time_as_in_folder_runs(tmp_path, name):
    """A JPEG named `cam-01/trap.html` (a script in a comment segment) never reaches a worker,
    so neither the tables nor the review screen ever hold it: kind `unsupported_type`, as a
    folder run gives the same file."""
    from trapline.pipelines.source import list_media

    hostile = tmp_path / "cam-01" / name
    hostile.parent.mkdir()
    hostile.write_bytes(JPEG_WITH_SCRIPT)
    raw = encode(v1(uri=hostile.as_uri(), deployment_id="cam-01"))
    failure = only_failure(parse_upload(raw, source=SOURCE), raw, "unsupported_type")
    assert failure.deployment_id == "cam-01" and failure.uri == hostile.as_uri()
    assert "not a supported photo or video type" in failure.message
    raw = encode({"Records": [s3_record(f"cam-01/{name}")]})
    failure = only_failure(parse_upload(raw, source=SOURCE), raw, "unsupported_type")
    assert failure.deployment_id == "cam-01" and failure.uri == f"s3://traps/cam-01/{name}"
    with pytest.raises(ValueError, match="not a supported photo or video type"):
        encode_upload(Upload(uri=hostile.as_uri(), deployment_id="cam-01"))
    folder = list_media(str(tmp_path))
    assert folder.refs == [] and [f.kind for f in folder.unsupported] == ["unsupported_type"]


@pytest.mark.parametrize("name", ["IMG_0001.JPG", "a.jpeg", "b.png", "c.MP4", "d.avi", "e.mov"])
def test_photo_and_video_names_pass_the_extension_check(name):
    only_event(parse_upload(encode(v1(uri=f"s3://traps/cam-07/{name}")), source=SOURCE))
    only_event(parse_upload(encode({"Records": [s3_record(f"cam-07/{name}")]}), source=SOURCE))
