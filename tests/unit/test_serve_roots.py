"""`trapline serve` reads only below its input and output unless told otherwise."""

from __future__ import annotations

import pytest

from trapline.pipelines import uri_safety
from trapline.pipelines.types import StageError
from trapline.services.run.serve_roots import StorageRootsError, serve_storage_roots
from trapline.services.settings import Settings


def test_unset_roots_default_to_the_upload_prefix_and_the_output(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRAPLINE_STORAGE_ROOTS", raising=False)
    settings = Settings(api_upload_prefix="s3://camtraps/uploads")
    assert serve_storage_roots(settings, "results") == [
        "s3://camtraps/uploads",
        str(tmp_path / "results"),
    ]
    local = Settings(api_upload_prefix="uploads")
    assert serve_storage_roots(local, "s3://b/tables") == [
        str(tmp_path / "uploads"),
        "s3://b/tables",
    ]


def test_an_empty_list_is_refused_and_a_star_allows_any_bucket_on_purpose(monkeypatch):
    monkeypatch.setenv("TRAPLINE_STORAGE_ROOTS", "[]")
    with pytest.raises(StorageRootsError, match=r"empty list.*\[\"\*\"\]"):
        serve_storage_roots(Settings(), "out")
    monkeypatch.setenv("TRAPLINE_STORAGE_ROOTS", '["*"]')
    assert serve_storage_roots(Settings(), "out") == ["*"]
    monkeypatch.setenv("TRAPLINE_STORAGE_ROOTS", '["*", "s3://b/"]')
    with pytest.raises(StorageRootsError, match="give it alone"):
        serve_storage_roots(Settings(), "out")


def test_the_default_roots_refuse_a_file_outside_them(tmp_path):
    roots = serve_storage_roots(
        Settings(api_upload_prefix=str(tmp_path / "up")), str(tmp_path / "out")
    )
    try:
        uri_safety.configure_storage_roots(roots)
        uri_safety.check_uri(str(tmp_path / "up" / "cam" / "a.jpg"))
        with pytest.raises(StageError, match="outside the configured storage roots"):
            uri_safety.check_uri("/etc/hostname")
        uri_safety.configure_storage_roots(["*"])
        uri_safety.check_uri("/etc/hostname")  # any local file, on purpose
        with pytest.raises(StageError):
            uri_safety.check_uri("http://example.org/a.jpg")  # never http(s) without a root
    finally:
        uri_safety.configure_storage_roots(())
