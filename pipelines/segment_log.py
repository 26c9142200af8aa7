"""The segment log: which offsets of a partition are in the tables, written so that a crash or a
zombie can never make a row appear twice or not at all.

A *segment* is a run of contiguous offsets of one partition, processed together. Its life, in
files under `_segments/TOPIC/PARTITION/` next to the tables (hidden from table readers):

1. claim  `<first>.claim.json`  {"last_offset": L}: created only if absent. Whoever creates it
   fixes the segment's range [first, L] for ever; anyone else who starts at `first` (a zombie that
   lost the partition, a replay after a crash) reads it and processes exactly that range.
2. the table files, one per partition folder, all named `part-TOPIC-PARTITION-<first>.parquet`,
   each created only if absent. Same name, same range, same rows: a replay that finds a file
   already there leaves it.
3. commit `<first>.json` {"last_offset", "files", "media_ids", "sha256s"}: created only if absent, once every
   file is durable. The segment exists for readers of the log from here on; Kafka's offset is
   committed after this, and is only a hint: on assignment a worker resumes after the last commit.

A worker that died between 1 and 3 left a claim without a commit: the next owner replays that
range, completes the missing files and commits. Claim and commit are plain objects, so this works
the same on a local disk (hard link) and on S3 (`If-None-Match: *`), with no lock service.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from trapline.pipelines.sinks import create_if_absent

LOG_DIR = "_segments"


def part_name(topic: str, partition: int, first_offset: int) -> str:
    """The table files' name for a segment: where it starts, so a replay finds the same name."""
    return f"{topic}-{partition:05d}-{first_offset:020d}"


@dataclass(frozen=True, slots=True)
class Commit:
    first_offset: int
    last_offset: int
    files: list[str]  # relative to the results root
    media_ids: list[str]
    sha256s: list[str] = field(
        default_factory=list
    )  # the same bytes under another id are duplicates too


class SegmentLog:
    """Claims and commits of one results root (a local folder or an s3:// prefix)."""

    def __init__(self, fs: Any, root: str):
        self.fs = fs
        self.root = root.rstrip("/")

    def claim(self, topic: str, partition: int, first: int, last: int) -> int:
        """Fix [first, last] for this segment, or learn the range someone fixed before us."""
        path = self._path(topic, partition, f"{first:020d}.claim.json")
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if create_if_absent(self.fs, path, json.dumps({"last_offset": last}).encode()):
            return last
        return int(self._read(path)["last_offset"])

    def commit(self, topic: str, partition: int, commit: Commit) -> bool:
        """Record a complete segment; False if it was already recorded (same range, by the claim)."""
        path = self._path(topic, partition, f"{commit.first_offset:020d}.json")
        record = {
            "first_offset": commit.first_offset,
            "last_offset": commit.last_offset,
            "files": commit.files,
            "media_ids": commit.media_ids,
            "sha256s": commit.sha256s,
        }
        return create_if_absent(self.fs, path, json.dumps(record).encode())

    def commits(self, topic: str, partition: int) -> list[Commit]:
        """Every committed segment of the partition, in offset order."""
        return [
            Commit(
                r["first_offset"],
                r["last_offset"],
                r["files"],
                r["media_ids"],
                r.get("sha256s", []),
            )
            for r in (self._read(p) for p in self._list(topic, partition, ".json", ".claim.json"))
        ]

    def open_claim(self, topic: str, partition: int, first: int) -> int | None:
        """The last offset claimed for the segment at `first`, if a claim exists."""
        path = self._path(topic, partition, f"{first:020d}.claim.json")
        try:
            return int(self._read(path)["last_offset"])
        except FileNotFoundError:
            return None

    def _path(self, topic: str, partition: int, name: str) -> str:
        return posixpath.join(self.root, LOG_DIR, topic, f"{partition:05d}", name)

    def _list(self, topic: str, partition: int, suffix: str, exclude: str) -> list[str]:
        folder = self._path(topic, partition, "")
        if not self.fs.exists(folder):
            return []
        names = self.fs.ls(folder, detail=False)
        return sorted(n for n in names if n.endswith(suffix) and not n.endswith(exclude))

    def _read(self, path: str) -> dict[str, Any]:
        with self.fs.open(path, "rb") as handle:
            return json.loads(handle.read())
