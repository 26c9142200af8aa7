"""Media rows committed to a Delta table as a stream worker commits them, for tests of what
reads, compacts or vacuums the tables (tests/unit/test_compact.py, and the polling reader's
self-check in tests/reliability/test_exactly_once_delta.py)."""

from __future__ import annotations

from trapline.models.labels import DEEPFAUNE_LABELS
from trapline.pipelines import delta
from trapline.pipelines.flow import assemble
from trapline.pipelines.tables import ModelNames
from trapline.pipelines.types import MediaRef, MediaResult
from trapline.services.settings import Settings

MODELS = ModelNames("det", "1", "cls", "1")


def commit_photos(root: str, first: int, count: int, app_id: str = "writer") -> None:
    """One commit of `count` photos, as a stream worker makes them (with an app version)."""
    results = [
        MediaResult(
            MediaRef(uri=f"/cards/cam/{i}.jpg", deployment_id="cam"),
            f"m{i:05d}",
            f"{i:064d}",
            4000,
            3000,
            None,
            None,
            None,
            1,
            [],
        )  # fmt: skip
        for i in range(first, first + count)
    ]
    tables = assemble(results, [], Settings().stage_options(), MODELS, DEEPFAUNE_LABELS)
    table = delta.create_table(root, "media")
    table.update_incremental()
    delta.append(table, "media", tables.media, [delta.AppVersion(app_id, first + count - 1)])
