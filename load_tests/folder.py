"""Folder mode under load: `trapline run`'s own code (`run_folder`, Ray actors) on N photos,
with a throughput timeline, the workers' CPU and memory, and bytes moved per photo."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from load_tests.photos import link_folder
from load_tests.procstats import ProcessSampler, cmdline, descendants
from trapline.services.run.folder import run_folder
from trapline.services.settings import Settings

WORKER_STAGES = ("read", "decode", "detect", "classify")  # the photo stages; "write" is overhead


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ray_workers() -> dict[str, int]:
    """This run's pipeline actors, the rest of our own Ray (raylet, GCS, idle workers: `ray-`),
    and the driver; never another user's Ray on the same machine."""
    found = {"driver": os.getpid()}
    for pid in descendants(os.getpid()):
        kind = "worker" if cmdline(pid).startswith("ray::PipelineActor") else "ray"
        found[f"{kind}-{pid}"] = pid
    return found


def cpu_split(
    sampler: ProcessSampler, t0: float, t1: float, cores: int, ideal_cpu_s: float
) -> dict:
    """Where the cores went in [t0, t1]: efficiency = work efficiency x core share.

    core share = CPU our processes got / (cores x seconds): below 1 when the cores were idle
    (serial phases, a worker waiting) or taken by other users of a shared machine;
    work efficiency = CPU the stages cost alone / CPU our processes spent: below 1 for the
    pipeline's own overhead (Ray, driver, contention that makes each stage dearer).
    """
    labels = list(sampler.samples)
    workers = [label for label in labels if label.startswith("worker-")]
    ray = [label for label in labels if label.startswith("ray-")]
    used = {
        "workers": sampler.cpu_seconds(workers, t0, t1),
        "driver": sampler.cpu_seconds(["driver"], t0, t1),
        "ray_system": sampler.cpu_seconds(ray, t0, t1),
    }
    spent = sum(used.values())
    seconds = max(t1 - t0, 1e-9)
    machine = os.cpu_count() or cores
    idle = min(sampler.cpu_seconds(["_idle"], t0, t1) / (machine * seconds), 1.0)
    ours = spent / (cores * seconds)
    others = max(0.0, 1.0 - idle - spent / (machine * seconds))
    return {
        "window_seconds": round(seconds, 2),
        "cpu_seconds": {k: round(v, 2) for k, v in used.items()},
        "core_share": round(ours, 3),
        "machine_idle_share": round(idle, 3),
        "other_users_share": round(others, 3),
        "work_efficiency": round(ideal_cpu_s / spent, 3) if spent else None,
        # what efficiency would be had other users not taken CPU: ours / (ours + idle)
        "efficiency_on_cores_available": (
            round(ideal_cpu_s / spent * ours / min(1.0, ours + idle * machine / cores), 3)
            if spent
            else None
        ),
    }


def stage_busy_share(summary, workers: int) -> float | None:
    """The workers' time inside the photo stages (read, decode, detect, classify, timed by the
    workers themselves in this run) / (workers x the run's busy time): the pipeline's efficiency
    against a bound measured in the conditions it runs in (warm, batched, same processes), <= 1
    by construction. What is left is overhead: the driver, Ray's hops, waits for a batch or a
    write. The driver's "write" is not a worker stage."""
    busy = summary.wall_seconds - summary.startup_seconds - summary.shutdown_seconds
    staged = sum(v for k, v in summary.stage_seconds.items() if k in WORKER_STAGES)
    return round(staged / (max(workers, 1) * busy), 3) if busy > 0 else None


def run_folder_bench(
    paths: list[Path],
    settings: Settings,
    stage_cost_s: float,
    cores: int,
    inspect: Callable[[Path, Path | None], dict] | None = None,
) -> dict:
    """One `run_folder` over exactly `paths`; figures as a dict (see `report.FOLDER_FIELDS`).
    `inspect(out, source)` measures the output before it is removed (load_tests/growth.py)."""
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
            ended = time.monotonic()
            sampler.sample()
        written = folder_size(out)
        inspected = inspect(out, source) if inspect else {}
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
        "stage_busy_share": stage_busy_share(summary, settings.workers),
        "photos_per_node": dict(summary.photos_per_node),  # Ray node id -> photos
        "stage_seconds_per_photo": {
            stage: round(seconds / n, 5) for stage, seconds in sorted(summary.stage_seconds.items())
        },
        "bytes_read_per_photo": round(summary.bytes_read / n) if n else 0,
        "bytes_written_per_photo": round(written / n) if n else 0,
        "processes": {k: v for k, v in sampler.summary().items() if not k.startswith("ray-")},
        "ray_system_rss_mb_peak": round(
            sum(v["rss_mb_peak"] for k, v in sampler.summary().items() if k.startswith("ray-")), 1
        ),
        "cpu": cpu_split(
            sampler,
            ended - (summary.wall_seconds - summary.startup_seconds),
            ended - summary.shutdown_seconds,  # Ray stops after the tables are written
            min(cores, max(settings.workers, 1)),
            stage_cost_s * n,
        ),  # fmt: skip
        "timeline": [[round(t, 3), done] for t, done in timeline],
    } | ({"inspected": inspected} if inspect else {})
