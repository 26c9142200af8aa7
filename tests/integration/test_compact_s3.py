"""`trapline compact --vacuum` on S3 (the real Ceph RGW): delta-rs's `full` VACUUM lists the
table's prefix and reads each object's last-modified time, where the local tests
(tests/unit/test_compact.py) read a folder."""

from __future__ import annotations

from support.delta_commits import commit_photos

from trapline.pipelines.readers import read_table
from trapline.services.tools import compact as compact_tool
from trapline.services.tools.compact import compact

pytest_plugins = ["support.s3_fixtures"]


def test_full_vacuum_on_s3_deletes_replaced_files_and_a_crashed_commits_orphan(
    s3, s3_bucket, monkeypatch
):
    bucket = s3_bucket("compact")
    root = f"s3://{bucket}/results"
    for batch in range(3):
        commit_photos(root, batch * 5, 5)

    def data_files() -> set[str]:
        return {k for k in s3.find(f"{bucket}/results/media") if k.endswith(".parquet")
                and "/_delta_log/" not in k}  # fmt: skip

    written = data_files()
    assert len(written) == 3
    orphan = next(iter(written)).rsplit("/", 1)[0] + "/part-crashed-commit.parquet"
    s3.copy(next(iter(written)), orphan)  # a file whose commit never landed

    monkeypatch.setattr(compact_tool, "VACUUM_FLOOR_HOURS", 0)  # an hour later, as it were
    report = compact(root, ["media"], vacuum_hours=0, force_retention=True)

    assert report.vacuumed == 4  # the three files OPTIMIZE replaced, and the orphan
    left = data_files()
    assert len(left) == 1 and not left & (written | {orphan})
    assert sorted(read_table(root, "media").column("media_id").to_pylist()) == [
        f"m{i:05d}" for i in range(15)
    ]
