"""Loading ultralytics checkpoints (MDv1000, MDv6): through the ultralytics package itself.

Unlike YOLOv5's handful of blocks, ultralytics models (YOLOv8/v9/v10/v11 heads with DFL,
C2f/C3k2/C2PSA blocks, attention) are many classes that change between releases, so the importer
does not re-implement them: it needs `pip install ultralytics` (AGPL-3.0, never a Trapline
dependency; install it yourself, only where you import). Its own loader applies its
compatibility patches. The exported graph answers (B, 4 + nc, N): box centre and size in input
pixels, then class scores, no objectness (the `ultralytics` layout of `models/yolo.py`).

Not exercised by the test suite (the package is not installed in CI); see docs/models.md.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from trapline.models.importers.identify import CheckpointError


def load_ultralytics(path: Path) -> nn.Module:
    try:
        from ultralytics.nn.tasks import attempt_load_one_weight
    except ImportError:
        raise CheckpointError(
            f"{path} is an ultralytics checkpoint (MDv1000/MDv6); importing it needs the "
            "ultralytics package (AGPL-3.0, not installed with Trapline): pip install ultralytics, "
            "then rerun the import"
        ) from None
    model, _ = attempt_load_one_weight(str(path), device="cpu", inplace=True, fuse=False)
    head = model.model[-1]
    if not hasattr(head, "nc") or getattr(head, "end2end", False):
        raise CheckpointError(
            f"{path}: head {type(head).__name__} is not a (B, 4 + nc, N) detection head "
            "(end-to-end YOLOv10/RT-DETR heads are not supported)"
        )
    return model.float().eval()
