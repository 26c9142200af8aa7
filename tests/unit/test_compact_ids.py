"""CompactIds answers `in` exactly as a set of the same strings would, while holding 16 bytes an
id: the deduplication of every run and stream worker rests on it (pipelines/readers.py)."""

import hashlib
import random
import string
import sys
from dataclasses import replace

import pytest

from trapline.pipelines.flow import split_duplicates
from trapline.pipelines.readers import CompactIds
from trapline.pipelines.types import MediaRef, MediaResult


def _random_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_/.é"
    return ["".join(rng.choices(alphabet, k=rng.randint(1, 70))) for _ in range(count)]


def _digest_ends_in_zero_bytes(count: int) -> list[str]:
    """Ids whose digest ends in NUL bytes: a NumPy bytes dtype ('S16') would strip them and
    answer wrongly, so these are the ids most likely to catch a wrong storage."""
    found, number = [], 0
    while len(found) < count:
        value = f"nul-{number}"
        if hashlib.blake2b(value.encode(), digest_size=16).digest().endswith(b"\0"):
            found.append(value)
        number += 1
    return found


@pytest.mark.parametrize("count", [0, 1, CompactIds.MERGE_EVERY - 1, 3 * CompactIds.MERGE_EVERY + 7])
def test_membership_matches_a_python_set_across_merges(count):
    members = _random_ids(count, seed=count) + _digest_ends_in_zero_bytes(20)
    strangers = _random_ids(5000, seed=count + 1) + ["", "x" * 10_000]
    strangers = [s for s in strangers if s not in set(members)]
    ids = CompactIds()
    for start in range(0, len(members), 997):  # added in pieces, as commits add them
        ids.update(members[start : start + 997])
    assert len(ids) == len(set(members))
    assert all(member in ids for member in members)
    assert not any(stranger in ids for stranger in strangers)


def test_none_and_non_strings_are_never_members():
    ids = CompactIds(["a", None, "b"])
    assert len(ids) == 2
    assert None not in ids and 1 not in ids and b"a" not in ids
    assert "a" in ids and "b" in ids


def test_a_near_twin_is_not_a_member():
    """One character off, a prefix, different case or Unicode normalisation: all new ids."""
    sha = hashlib.sha256(b"photo").hexdigest()
    ids = CompactIds([sha, "IMG_0001.JPG", "café"])
    for twin in (sha[:-1], sha[:-1] + "0", sha.upper(), "IMG_0001.jpg", "cafe\u0301", sha + " "):
        assert twin not in ids


def test_a_hundred_thousand_ids_take_a_tenth_of_a_set_of_strings():
    members = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(100_000)]
    ids = CompactIds(members)
    as_set = set(members)
    set_bytes = sys.getsizeof(as_set) + sum(sys.getsizeof(m) for m in members)
    compact_bytes = ids._sorted.nbytes + sys.getsizeof(ids._recent) + sum(
        sys.getsizeof(d) for d in ids._recent
    )
    assert compact_bytes * 8 < set_bytes, (compact_bytes, set_bytes)


def _result(uri: str, media_id: str, sha256: str) -> MediaResult:
    return MediaResult(
        ref=MediaRef(uri=uri, deployment_id="cam"),
        media_id=media_id,
        sha256=sha256,
        width=10,
        height=10,
        exif_datetime=None,
        camera_make=None,
        camera_model=None,
        byte_size=1,
        detections=[],
    )


def test_deduplication_against_compact_ids_marks_known_ids_and_known_bytes():
    known = CompactIds(["id-old", "sha-old"])
    results = [
        _result("a.jpg", "id-old", "sha-new-1"),  # id already written
        _result("b.jpg", "id-new-2", "sha-old"),  # bytes already written
        _result("c.jpg", "id-new-3", "sha-new-3"),  # new
    ]
    unique, duplicates = split_duplicates(results, lambda deployment: known)
    assert [r.ref.uri for r in unique] == ["c.jpg"]
    assert sorted(f.uri for f in duplicates) == ["a.jpg", "b.jpg"]
    assert all(f.kind == "duplicate" for f in duplicates)


def _commit(root: str, deployment: str, count: int) -> None:
    """`count` photos of `deployment` in the media table, as a worker commits them."""
    from trapline.models.labels import DEEPFAUNE_LABELS
    from trapline.pipelines import delta
    from trapline.pipelines.flow import assemble
    from trapline.pipelines.tables import ModelNames
    from trapline.services.settings import Settings

    results = [
        replace(
            _result("", f"{deployment}-{i}", f"sha-{deployment}-{i}"),
            ref=MediaRef(uri=f"/cards/{deployment}/{i}.jpg", deployment_id=deployment),
        )
        for i in range(count)
    ]
    models = ModelNames("det", "1", "cls", "1")
    tables = assemble(results, [], Settings().stage_options(), models, DEEPFAUNE_LABELS)
    delta.append(delta.create_table(root, "media"), "media", tables.media)


def test_known_media_lets_quiet_deployments_go_and_reads_them_again_when_they_send(tmp_path):
    """A stream worker meets camera after camera for weeks: what it holds for duplicate checks
    stays under `max_ids`, and a camera let go still has its photos found (read from the table)."""
    from trapline.pipelines.readers import KnownMedia

    root = str(tmp_path)
    for camera in ("cam-a", "cam-b", "cam-c"):
        _commit(root, camera, 10)  # 20 digests each: media ids and sha256s
    known = KnownMedia(root, max_ids=45)
    assert "cam-a-3" in known.of("cam-a") and "sha-cam-b-9" in known.of("cam-b")
    assert list(known.ids) == ["cam-a", "cam-b"]
    known.of("cam-a")  # used again: cam-b is now the least recent
    assert "cam-c-0" in known.of("cam-c")
    assert list(known.ids) == ["cam-a", "cam-c"]  # cam-b let go: 40 held, not 60
    assert sum(k.held for k in known.ids.values()) <= 45
    assert "cam-b-5" in known.of("cam-b") and "sha-cam-b-5" in known.of("cam-b")  # read again
    assert "cam-b-10" not in known.of("cam-b")
    assert list(known.ids) == ["cam-c", "cam-b"]
    only = KnownMedia(root, max_ids=5)  # smaller than one camera: the one in use stays
    assert "cam-a-1" in only.of("cam-a") and list(only.ids) == ["cam-a"]
