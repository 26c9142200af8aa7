"""Listing a folder one deployment at a time (pipelines/source.py) and the folder run's use of it."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import fsspec
import pytest

from trapline.pipelines.source import _files_below, list_deployments, list_media
from trapline.services.run.folder import FolderWork, RunSummary


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read by a listing")


def _deployments(listing) -> set[str]:
    return {r.deployment_id for r in listing.refs} | {f.deployment_id for f in listing.unsupported}


def test_each_deployment_is_listed_apart_in_name_order(tmp_path: Path) -> None:
    card = tmp_path / "card"
    _touch(card, "cam02/IMG_1.JPG", "cam01/b/IMG_2.jpg", "cam01/IMG_1.JPG", "cam01/notes.txt")
    parts = list(list_deployments(str(card)))
    assert [_deployments(p) for p in parts] == [{"cam01"}, {"cam02"}]
    assert [Path(r.uri).name for r in parts[0].refs] == ["IMG_1.JPG", "IMG_2.jpg"]  # sorted paths
    assert [f.kind for f in parts[0].unsupported] == ["unsupported_type"]


def test_loose_photos_join_the_deployment_named_after_the_folder(tmp_path: Path) -> None:
    """Photos directly in the root belong to the root's name, together with a subfolder of that
    name: one listing, so the deployment is committed whole once, not as two deployments."""
    card = tmp_path / "cam07"
    _touch(card, "IMG_9.JPG", "cam07/IMG_1.JPG", "cam03/IMG_1.JPG")
    parts = list(list_deployments(str(card)))
    assert [_deployments(p) for p in parts] == [{"cam03"}, {"cam07"}]
    assert sorted(Path(r.uri).name for r in parts[1].refs) == ["IMG_1.JPG", "IMG_9.JPG"]


def test_a_local_folder_is_walked_to_the_same_entries_as_fsspec_walks_it(tmp_path: Path) -> None:
    """The local walk is `os.walk` for speed; its entries are fsspec's: a linked folder is one
    entry (then an unsupported-type failure), not walked into, and a broken link is listed."""
    elsewhere = tmp_path / "elsewhere"
    _touch(elsewhere, "IMG_4.JPG", "sub/IMG_5.JPG")
    card = tmp_path / "card"
    _touch(card, "cam01/IMG_1.JPG", "cam01/night/IMG_2.JPG", "cam01/.hidden", "cam02/IMG_3.JPG")
    (card / "cam01" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (card / "cam01" / "broken.JPG").symlink_to(tmp_path / "nothing.JPG")
    (card / "cam01" / "photo_link.JPG").symlink_to(elsewhere / "IMG_4.JPG")
    fs = fsspec.filesystem("file")
    walked = sorted(
        posixpath.join(folder, name)
        for folder, _, names in fs.walk(str(card / "cam01"), detail=False)
        for name in names
    )
    assert _files_below(fs, str(card / "cam01")) == (walked, [])
    assert str(card / "cam01" / "linked") in walked
    listing = next(iter(list_deployments(str(card))))
    assert [Path(r.uri).name for r in listing.refs] == [
        "IMG_1.JPG", "broken.JPG", "IMG_2.JPG", "photo_link.JPG",
    ]  # fmt: skip
    assert [Path(f.uri).name for f in listing.unsupported] == ["linked"]
    assert listing.hidden == 1


def test_an_unreadable_folder_is_a_failures_row_not_a_gap(tmp_path: Path, monkeypatch) -> None:
    """fsspec's and os.walk's default skips a folder it may not read, photos and all; here it is
    a `forbidden` failures row of its deployment, and the rest is listed. (Refused by the
    kernel's scandir, as for a user without the folder's read bit: CI runs as root.)"""
    card = tmp_path / "card"
    _touch(card, "cam01/IMG_1.JPG", "cam01/locked/IMG_2.JPG", "cam01/.Trashes/x/IMG_3.JPG",
           "cam02/IMG_1.JPG")  # fmt: skip
    refused = {str(card / "cam01" / "locked"), str(card / "cam01" / ".Trashes")}
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path) in refused:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    cam01, cam02 = list_deployments(str(card))
    assert [Path(r.uri).name for r in cam01.refs] == ["IMG_1.JPG"]
    assert [(f.uri, f.kind, f.deployment_id) for f in cam01.unsupported] == [
        (str(card / "cam01" / "locked"), "forbidden", "cam01")
    ]
    assert cam01.hidden == 1  # the dot folder: not an input, counted
    assert [Path(r.uri).name for r in cam02.refs] == ["IMG_1.JPG"]


def test_a_store_outage_while_listing_is_raised_not_skipped(monkeypatch) -> None:
    """Any other listing error (a timeout, a 503) stops the listing: the run waits or stops
    instead of committing a deployment with photos missing. fsspec's memory store, whose
    `ls` of one folder fails as a remote store's would."""
    from fsspec.implementations.memory import MemoryFileSystem

    fs = fsspec.filesystem("memory")
    for name in ("/card/cam01/IMG_1.JPG", "/card/cam01/night/IMG_2.JPG"):
        fs.pipe(name, b"x")
    real_ls = MemoryFileSystem.ls

    def ls(self, path, detail=True, **kwargs):
        if path.rstrip("/").endswith("night"):
            raise TimeoutError("read timed out")
        return real_ls(self, path, detail=detail, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "ls", ls)
    with pytest.raises(TimeoutError):
        list(list_deployments("memory://card"))


def test_dotfiles_are_counted_not_listed_and_a_single_file_is_its_own_input(
    tmp_path: Path,
) -> None:
    card = tmp_path / "card"
    _touch(card, ".DS_Store", ".Trash/IMG_1.JPG", "cam01/._IMG_1.JPG", "cam01/IMG_1.JPG")
    listing = list_media(str(card))
    assert [Path(r.uri).name for r in listing.refs] == ["IMG_1.JPG"]
    assert listing.hidden == 3
    single = list_media(str(card / "cam01" / "IMG_1.JPG"))
    assert [r.uri for r in single.refs] == [str(card / "cam01" / "IMG_1.JPG")]


def test_a_folder_run_lists_the_next_deployment_only_when_it_needs_its_photos(
    tmp_path: Path,
) -> None:
    """The run holds one deployment's listing: while the first deployment's batches go out, the
    second is not listed yet, and each deployment's photo count is known before its first
    batch leaves (the writer commits a deployment when that count reaches 0)."""
    card = tmp_path / "card"
    _touch(card, *[f"cam01/IMG_{i}.JPG" for i in range(5)], "cam02/IMG_1.JPG", "cam02/a.txt")
    summary = RunSummary()
    work = FolderWork(str(card), str(tmp_path / "out"), batch_size=2, summary=summary)
    batches = work.batches()
    first = next(batches)
    assert {r.deployment_id for r in first} == {"cam01"}
    assert summary.files == 5 and dict(work.remaining) == {"cam01": 5}
    rest = list(batches)
    assert [len(b) for b in [first, *rest]] == [2, 2, 1, 1]  # a deployment's batches stay apart
    assert summary.files == 7 and dict(work.remaining) == {"cam01": 5, "cam02": 1}
    assert [f.uri.endswith("a.txt") for f in work.unsupported["cam02"]] == [True]
    assert work.settled == 1  # the unsupported file: nothing to process


def test_a_folder_given_with_dot_dot_is_listed_as_the_system_resolves_it(tmp_path):
    """`trapline run ../cards/photos` made every photo a forbidden_uri failure ('..' in its
    path) and another spelling of the folder was not recognised as done."""
    from trapline.pipelines.source import list_deployments
    from trapline.pipelines.uri_safety import check_uri

    card = tmp_path / "cards" / "cam-1"
    card.mkdir(parents=True)
    (card / "IMG_0001.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "elsewhere").mkdir()
    spelled = str(tmp_path / "elsewhere" / ".." / "cards")
    uris = [ref.uri for listing in list_deployments(spelled) for ref in listing.refs]
    assert uris == [str(card / "IMG_0001.jpg")]
    for uri in uris:
        check_uri(uri)
