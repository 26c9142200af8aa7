"""Folder mode under load: `trapline run`'s own code (`run_folder`, Ray actors) on N photos,
with a throughput timeline, the workers' CPU and memory, and bytes moved per photo."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from load_tests.photos import link_folder
from load_tests.procstats import ProcessSampler, cmdline, descendants
from trapline.services.runner import run_folder
from trapline.services.settings import Settings


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ray_workers() -> dict[str, int]:
    """This run's pipeline actors (our own Ray's processes) and the driver."""
    found = {"driver": os.getpid()}
    for pid in descendants(os.getpid()):
        if cmdline(pid).startswith("ray::PipelineActor"):
            found[f"worker-{pid}"] = pid
    return found


def run_folder_bench(paths: list[Path], settings: Settings) -> dict:
    """One `run_folder` over exactly `paths`; figures as a dict (see `report.FOLDER_FIELDS`)."""
    work = Path(tempfile.mkdtemp(prefix="trapline-bench-folder-"))
    try:
        source = link_folder(paths, work / "photos")
        out = work / "out"
        timeline: list[tuple[float, int]] = []
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            timeline.append((time.monotonic() - started, done))

        with ProcessSampler(ray_workers) as sampler:
            summary = run_folder(str(source), str(out), settings, on_progress=progress)
        written = folder_size(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = summary.files
    batches = math.ceil(len(paths) / settings.batch_size) if paths else 0
    return {
        "workers": settings.workers,
        "photos": n,
        "processed": summary.processed,
        "failed": summary.failed,
        "photos_per_second_steady": round(summary.steady_photos_per_second, 3),
        "photos_per_second_overall": round(summary.photos_per_second, 3),
        "startup_seconds": round(summary.startup_seconds, 2),
        "wall_seconds": round(summary.wall_seconds, 2),
        "mean_batch_fill": round(n / batches / settings.batch_size, 3) if batches else 0.0,
        "stage_seconds_per_photo": {
            stage: round(seconds / n, 5) for stage, seconds in sorted(summary.stage_seconds.items())
        },
        "bytes_read_per_photo": round(summary.bytes_read / n) if n else 0,
        "bytes_written_per_photo": round(written / n) if n else 0,
        "processes": sampler.summary(),
        "timeline": [[round(t, 3), done] for t, done in timeline],
    }
