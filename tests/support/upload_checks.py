"""The invariant every parse of upload-event bytes keeps (hypothesis in tests/unit/test_uploads.py,
atheris in tests/reliability/fuzz_uploads.py): valid events, or failures, or reported ignores."""

from __future__ import annotations

from trapline.pipelines.uploads import ID_PATTERN, MAX_ID_CHARS, MAX_URI_CHARS, ParseResult

SOURCE = "trapline.uploads/2/41"


def assert_well_formed(result: ParseResult, raw: bytes) -> None:
    assert isinstance(result, ParseResult)
    assert result.events or result.failures or result.ignored
    for event in result.events:
        ref = event.ref
        assert ID_PATTERN.fullmatch(ref.deployment_id) and len(ref.deployment_id) <= MAX_ID_CHARS
        assert ref.media_id is None or ID_PATTERN.fullmatch(ref.media_id)
        assert "://" in ref.uri and len(ref.uri) <= MAX_URI_CHARS
        ref.uri.encode("utf-8")
        assert ref.timestamp is None or ref.timestamp.utcoffset() is not None
        assert event.uploaded_at is None or event.uploaded_at.utcoffset() is not None
        assert ref.source == SOURCE
    for failure in result.failures:
        assert failure.stage == "event" and failure.kind and failure.message
        assert failure.raw_event == raw and failure.source == SOURCE
