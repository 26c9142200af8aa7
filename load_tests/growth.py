"""Costs as the work grows: 1k, 10k, 100k small photos through a folder run and the stream.

    .venv/bin/python -m load_tests --mode growth --sizes 1000,10000,100000

A season's backlog is many small photos, where per-photo overheads (commits, events, Ray hops,
metadata) show. Photos are 1280x960 JPEGs of ~220 KB: 500 rendered scenes, and for every later
index a copy of one of them whose EXIF capture time is rewritten (another time, another
sha256: a photo of its own to the pipeline, the same decode cost), cached on disk and evicted
from the page cache before each run (`drop_cached`: every size reads from disk). One input in
100 is a truncated JPEG (`BAD_EVERY`), so the failures table and the stream's dead-letter topic
grow with the run too; each run checks that every one of them has its failures row and, in the
stream, that every failures row has its dead-letter record (the stream's also include a
`duplicate` for each warm-up photo, sent again among the measured ones).

Both modes run as a user runs them, as processes of their own: the folder run is `trapline run`
(its driver is that process, not this benchmark, which holds every photo's path), the stream is
`trapline serve` workers. For each size and mode it records: photos/s, peak and final RSS of
every process, the tables' data files and log entries, the time to open the tables (delta-rs) and to resume (the stream:
a partition's versions from the log; a folder run: which inputs are done), the report's
build time, and the rate of a run's 9th tenth of photos against its 2nd (`late_to_early_rate`). Flat means the ratios to the smallest size stay ~1 (photos/s, RSS, open, resume).

The stream commits as a deployed worker does (the shipped `batch_max_records` and
`commit_interval_s`), not at the stream bench's 64 records / 1 s, a latency setting that wrote
~5 times the files for the same photos: each file OPTIMIZE replaces stays in every checkpoint
as a removal for the 7-day retention, and opening a table reads them all (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from load_tests.photos import DEPLOYMENTS, ensure_photos, link_folder, photo_path
from load_tests.procstats import ProcessSampler, cmdline, descendants
from load_tests.stream import StreamOptions, run_stream_bench
from trapline.pipelines import delta
from trapline.pipelines.delta_txn import read_app_versions
from trapline.pipelines.readers import CommittedInputs, read_table
from trapline.pipelines.source import list_deployments
from trapline.services.run.folder_tables import pending_refs
from trapline.services.settings import Settings

WIDTH, HEIGHT = 1280, 960
# A run of 1,000 photos lasts seconds, and its photos/s moved 139 -> 152 between two runs of the
# same code here: the smallest size, every ratio's denominator, if this short, is run 3 times
# and the median run kept.
SHORT_RUN_PHOTOS, SHORT_RUN_REPEATS = 10_000, 3
BASE = 500  # rendered scenes; a multiple of DEPLOYMENTS, so copy i keeps photo i's camera
assert BASE % DEPLOYMENTS == 0
# Opening the tables takes ~20 ms; a median of 15 opens, not 3: two runs of the same shape gave
# 25 and 45 ms (stop 32, not explained).
TIMING_REPEATS = 15
BAD_EVERY, BAD_AT = 100, 5  # input i is a truncated JPEG when i % 100 == 5 (after the warm-up's)


def _taken_at(index: int) -> bytes:
    """Photo `index`'s EXIF capture time, as load_tests/photos.py writes it."""
    when = datetime(2025, 5, 1, 6, 0, 0) + timedelta(seconds=index * 7)
    return when.strftime("%Y:%m:%d %H:%M:%S").encode()


def ensure_small_photos(cache: Path, count: int) -> list[Path]:
    """Inputs 0..count-1 of ~220 KB, generated once: scenes below BASE, retimed copies above,
    and every `BAD_EVERY`th (`is_bad_input`) that photo's first half, a truncated JPEG."""
    base = ensure_photos(cache, min(count, BASE), WIDTH, HEIGHT)
    folder = cache.resolve() / f"{WIDTH}x{HEIGHT}-retimed"
    paths = list(base)
    for index in range(len(base), count):
        path = photo_path(folder, index)
        if not path.exists():
            original = base[index % BASE].read_bytes()
            stamp = _taken_at(index % BASE)
            assert stamp in original, "the base photo's capture time is not where expected"
            _write(path, original.replace(stamp, _taken_at(index)))
        paths.append(path)
    truncated = cache.resolve() / f"{WIDTH}x{HEIGHT}-truncated"
    for index in range(BAD_AT, count, BAD_EVERY):
        bad = photo_path(truncated, index)
        if not bad.exists():
            whole = paths[index].read_bytes()
            _write(bad, whole[: len(whole) // 2])
        paths[index] = bad
    return paths


def is_bad_input(path: Path) -> bool:
    return path.parent.parent.name.endswith("-truncated")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    temporary.rename(path)


def drop_cached(paths: list[Path]) -> None:
    """Evict the photos from the page cache, so that every size reads them from disk, as a run
    reads from object storage. Left cached, 1,000 photos (220 MB) are read from memory and
    100,000 (21 GB, more than this machine's page cache) mostly from disk: 0.04 against 0.49
    ms a photo here, a cost of the machine that looked like one of the pipeline's growing."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def timed(action: Callable[[], object]) -> float:
    """Median seconds of `action` over TIMING_REPEATS runs."""
    timings = []
    for _ in range(TIMING_REPEATS):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return round(statistics.median(timings), 4)


def open_tables(out: Path) -> None:
    """Open every table with delta-rs, as a reader does."""
    for name in delta.WRITE_ORDER:
        delta.open_table(str(out), name)


def resume_partitions(out: Path) -> None:
    """Every partition's versions, from each table's log, as a stream worker resumes."""
    for name in delta.WRITE_ORDER:
        read_app_versions(delta.table_uri(str(out), name))


def table_costs(out: Path, source: Path | None, keep: Path | None = None) -> dict:
    """Files and log entries per table; median seconds to open the tables, to resume, and to
    build the report (the output's own measurements, taken before the benchmark removes it).
    The tables are copied to `keep` to be timed again beside another size's (`paired_ratios`)."""
    tables = {}
    for name in delta.WRITE_ORDER:
        folder = out / name
        log = folder / "_delta_log"
        table = delta.open_table(str(out), name)
        tables[name] = {
            "data_files": len(table.file_uris()) if table is not None else 0,  # live, in the log
            "files_on_storage": sum(1 for p in folder.rglob("*.parquet") if log not in p.parents),
            "log_entries": sum(1 for _ in log.iterdir()) if log.exists() else 0,
        }

    def resume() -> None:
        if source is None:  # the stream: every partition's versions, from each table's log
            resume_partitions(out)
        else:  # a folder run started again: which inputs the tables account for
            committed = CommittedInputs(str(out))  # as the run does (FolderWork)
            for listing in list_deployments(str(source)):
                pending_refs(committed, listing.refs, listing.unsupported)

    report = run_report_cli(out)
    if keep is not None:
        shutil.copytree(out, keep)
    return {
        "tables": tables,
        "failures_by_kind": _failures_by_kind(out),
        "late_to_early_rate": late_to_early_rate(out),
        "open_seconds": timed(partial(open_tables, out)),
        "resume_seconds": timed(resume),
        "report_seconds": report["seconds"],
        "report_peak_rss_mb": report["peak_rss_mb"],
        **({"kept_tables": str(keep)} if keep is not None else {}),
    }


def paired_ratios(small: Path, large: Path, stream: bool, rounds: int = 5) -> dict:
    """Open (and, for the stream, resume) times of the largest size's tables over the
    smallest's, timed in alternating rounds at the end of the run: this machine's speed drifts
    by up to 2x over the half hour between the two sizes' runs (the same open, timed 50 minutes
    apart: 9 -> 19 ms), so timings taken apart compare the machine, not the tables."""
    actions = {"open": open_tables, **({"resume": resume_partitions} if stream else {})}
    ratios = {}
    for name, action in actions.items():
        times: dict[Path, list[float]] = {small: [], large: []}
        for _ in range(rounds):
            for tables in (small, large):
                times[tables].append(timed(partial(action, tables)))
        small_s, large_s = statistics.median(times[small]), statistics.median(times[large])
        ratios[name] = round(large_s / small_s, 2)
        ratios[f"{name}_ms"] = [round(small_s * 1000, 1), round(large_s * 1000, 1)]
    return ratios


def run_report_cli(out: Path) -> dict:
    """`trapline report` on `out` as a user runs it, a process of its own: its seconds (with
    the ~2 s of imports, the same at every size) and its peak RSS."""
    with tempfile.TemporaryDirectory(prefix="trapline-growth-report-") as report:
        command = [sys.executable, "-m", "trapline", "report", str(out), "--out", report]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with ProcessSampler(lambda: {"report": process.pid}, interval_s=0.2) as sampler:
            _, errors = process.communicate()
        seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"trapline report exited {process.returncode}: {errors[-2000:]!r}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": sampler.summary().get("report", {}).get("rss_mb_peak"),
    }


def _failures_by_kind(out: Path) -> dict[str, int]:
    kinds = read_table(str(out), "failures", columns=["kind"]).column("kind").to_pylist()
    return dict(sorted(Counter(kinds).items()))


def late_to_early_rate(out: Path) -> float | None:
    """Rows per second in the 9th tenth of a run's media rows against the 2nd, from each commit's
    `processed_at`: a cost per photo that rises with the photos done shows inside one run,
    where the machine's load between two runs (photos/s of the same code moved 7-12 % from one
    run to the next here) does not. The 1st and 10th tenths are left out: the stream bench's
    warm-up photos and the start, the last event's hold and the drain. None when a tenth spans
    fewer than 3 commits (too coarse: small runs)."""
    stamps = read_table(str(out), "media", columns=["processed_at"]).column("processed_at")
    times = sorted(value.timestamp() for value in stamps.to_pylist())
    tenth = len(times) // 10
    early, late = times[tenth : 2 * tenth + 1], times[8 * tenth : 9 * tenth + 1]
    if tenth == 0 or len(set(early)) < 3 or len(set(late)) < 3:
        return None
    return round((early[-1] - early[0]) / (late[-1] - late[0]), 3)


def run_folder_cli(paths: list[Path], workers: int, inspect) -> dict:
    """`trapline run` over exactly `paths`, as a process of its own, sampled with its Ray workers
    (`--json-summary` gives the steady photos/s); `inspect(out, source)` measures the output."""
    work = Path(tempfile.mkdtemp(prefix="trapline-growth-folder-"))
    try:
        source = link_folder(paths, work / "photos")
        out, summary_file = work / "out", work / "summary.json"
        command = [
            sys.executable, "-m", "trapline", "run", str(source), "--out", str(out),
            "--workers", str(workers), "--json-summary", str(summary_file),
        ]  # fmt: skip
        env = {**os.environ, "TRAPLINE_THREADS_PER_WORKER": "1", "TRAPLINE_METRICS_PORT": "0"}
        with open(work / "run.log", "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

            def processes() -> dict[str, int]:
                found = {"driver": process.pid}
                for pid in descendants(process.pid):
                    kind = "worker" if cmdline(pid).startswith("ray::PipelineActor") else "ray"
                    found[f"{kind}-{pid}"] = pid
                return found

            with ProcessSampler(processes) as sampler:
                code = process.wait()
        if code != 0:
            tail = (work / "run.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"trapline run exited {code}: {tail}")
        summary = json.loads(summary_file.read_text())
        inspected = inspect(out, source)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sampled = sampler.summary()
    return {
        "photos_per_second_steady": summary["steady_photos_per_second"],
        "stage_seconds_per_photo": {
            stage: round(seconds / len(paths), 5)
            for stage, seconds in summary["stage_seconds"].items()
        },
        "processes": {k: v for k, v in sampled.items() if not k.startswith("ray-")},
        "rss_timeline_mb": {
            k: v for k, v in sampler.rss_timeline().items() if not k.startswith("ray-")
        },
        "ray_system_rss_mb_peak": round(
            sum(v["rss_mb_peak"] for k, v in sampled.items() if k.startswith("ray-")), 1
        ),
        "inspected": inspected,
    }


def run_growth_bench(
    sizes: list[int], cache: Path, modes: tuple[str, ...] = ("folder", "stream"), workers: int = 2
) -> dict:
    """Each size through each mode; the figures and their ratios to the smallest size."""
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    warmup = ensure_small_photos(cache, DEPLOYMENTS)
    kept = Path(tempfile.mkdtemp(prefix="trapline-growth-tables-"))
    rows_of = {"folder": partial(_folder_row, workers=workers),
               "stream": partial(_stream_row, warmup=warmup, workers=workers)}  # fmt: skip

    def run(mode: str, size: int, repeats: int) -> dict:
        paths = ensure_small_photos(cache, size)
        keep = lambda: kept / f"{mode}-{size}-{time.time_ns()}"  # noqa: E731
        row = _median_run(lambda: rows_of[mode](paths, keep=keep()), repeats)
        print(f"    {mode}: {_describe(row)}", flush=True)
        return row

    try:
        for size in sizes:
            print(f"  {size} photos", flush=True)
            baseline = size == sizes[0] and size < SHORT_RUN_PHOTOS  # the ratios' denominator
            for mode in modes:
                results[mode].append(run(mode, size, SHORT_RUN_REPEATS if baseline else 1))
        after: dict[str, dict] = {}
        if len(sizes) > 1:  # the smallest size again: the machine's drift, on both sides
            print(f"  {sizes[0]} photos again", flush=True)
            after = {mode: run(mode, sizes[0], SHORT_RUN_REPEATS) for mode in modes}
        paired = {
            mode: paired_ratios(Path(rows[0]["kept_tables"]), Path(rows[-1]["kept_tables"]),
                                stream=mode == "stream")
            for mode, rows in results.items()
        }  # fmt: skip
    finally:
        shutil.rmtree(kept, ignore_errors=True)
    photo_bytes = sum(p.stat().st_size for p in ensure_small_photos(cache, sizes[0])) / sizes[0]
    return {
        "sizes": sizes,
        "photo_bytes": round(photo_bytes),
        **{mode: {"runs": rows, "smallest_again": after.get(mode),
                  "ratios_to_smallest": _ratios(rows, after.get(mode), paired[mode])}
           for mode, rows in results.items()},
    }  # fmt: skip


def _folder_row(paths: list[Path], workers: int, keep: Path) -> dict:
    drop_cached(paths)
    figures = run_folder_cli(paths, workers, inspect=partial(table_costs, keep=keep))
    return _row(paths, figures, figures["photos_per_second_steady"])


def _stream_row(paths: list[Path], warmup: list[Path], workers: int, keep: Path) -> dict:
    shipped = Settings()  # a backlog committed as a deployed worker commits it
    options = StreamOptions(
        rate=0, workers=workers, timeout_s=max(600, len(paths) / 5),
        batch_max_records=shipped.batch_max_records, commit_interval_s=shipped.commit_interval_s,
    )  # fmt: skip
    drop_cached(paths)
    figures = run_stream_bench(paths, warmup, options, inspect=partial(table_costs, keep=keep))
    # processed, not readable: the last burst's fixed hold is latency (load_tests/stream.py)
    return _row(paths, figures, figures["processed_per_second"])


def _median_run(run: Callable[[], dict], repeats: int) -> dict:
    """The run with the median photos/s of `repeats`, with every run's photos/s beside it."""
    rows = sorted((run() for _ in range(repeats)), key=lambda row: row["photos_per_second"])
    middle = rows[len(rows) // 2]
    middle["photos_per_second_repeats"] = [row["photos_per_second"] for row in rows]
    return middle


def _row(paths: list[Path], figures: dict, photos_per_second: float) -> dict:
    """One size's figures; processes named by role (driver, worker-1, ...), not by pid."""
    processes = figures["processes"]
    roles: dict[str, str] = {}
    for label in sorted(
        processes,
        key=lambda k: (k.split("-")[0], int(k.rsplit("-", 1)[-1]) if k[-1].isdigit() else 0),
    ):
        kind = label.split("-")[0]
        roles[label] = (
            kind
            if kind == "driver"
            else f"{kind}-{sum(1 for r in roles.values() if r.startswith(kind)) + 1}"
        )
    row = {
        "photos": len(paths),
        "photos_per_second": photos_per_second,
        "bad_inputs": sum(1 for path in paths if is_bad_input(path)),
        "stage_seconds_per_photo": figures.get("stage_seconds_per_photo", {}),
        "peak_rss_mb": {roles[k]: v["rss_mb_peak"] for k, v in processes.items()},
        "final_rss_mb": {roles[k]: v["rss_mb_final"] for k, v in processes.items()},
        "rss_timeline_mb": {
            roles.get(k, k): v for k, v in figures.get("rss_timeline_mb", {}).items()
        },
        **figures["inspected"],
    }
    if "ray_system_rss_mb_peak" in figures:
        row["peak_rss_mb"]["ray-system (sum)"] = figures["ray_system_rss_mb_peak"]
    if "dead_letter_records" in figures:  # the stream's: one for each failures row
        row["dead_letter_records"] = figures["dead_letter_records"]
    failures = row["failures_by_kind"]
    if failures.get("truncated", 0) != row["bad_inputs"] or row.get(
        "dead_letter_records", sum(failures.values())
    ) != sum(failures.values()):
        print(f"    LOST OR EXTRA: {row['bad_inputs']} truncated inputs, failures rows "
              f"{failures}, {row.get('dead_letter_records')} dead-letter records", flush=True)  # fmt: skip
    return row


def largest_rss(rss_mb: dict[str, float]) -> float:
    """The largest single process's RSS (Ray's own processes are summed apart: left out)."""
    return max((v for k, v in rss_mb.items() if v and "(sum)" not in k), default=0.0)


def _ratios(rows: list[dict], again: dict | None = None, paired: dict | None = None) -> dict:
    """The largest size's figures over the smallest's. With `again` (the smallest size run
    again after the largest), photos/s is over the median of the smallest's runs before and
    after; with `paired`, open and resume are those timed side by side (`paired_ratios`)."""
    first, last = rows[0], rows[-1]
    baseline = statistics.median(
        first.get("photos_per_second_repeats", [first["photos_per_second"]])
        + (again["photos_per_second_repeats"] if again else [])
    )

    def peak(row: dict) -> float:
        return largest_rss(row["peak_rss_mb"])

    paired = paired or {}
    open_apart = round(last["open_seconds"] / first["open_seconds"], 2)
    resume_apart = round(last["resume_seconds"] / first["resume_seconds"], 2)
    return {
        "photos_per_second": round(last["photos_per_second"] / baseline, 3),
        "photos_per_second_before_only": round(
            last["photos_per_second"] / first["photos_per_second"], 3
        ),
        "peak_rss": round(peak(last) / peak(first), 3) if peak(first) else None,
        "open": paired.get("open", open_apart),
        "resume": paired.get("resume", resume_apart),
        "open_resume_side_by_side_ms": {k: v for k, v in paired.items() if k.endswith("_ms")},
        "open_apart": open_apart,
        "resume_apart": resume_apart,
        "largest_run_late_to_early_rate": last.get("late_to_early_rate"),
        "report_peak_rss": _ratio(last.get("report_peak_rss_mb"), first.get("report_peak_rss_mb")),
        "stage_seconds_per_photo": _ratio(
            sum(last.get("stage_seconds_per_photo", {}).values()),
            sum(first.get("stage_seconds_per_photo", {}).values()),
        ),
    }


def _ratio(last: float | None, first: float | None) -> float | None:
    return round(last / first, 3) if last and first else None


def _describe(row: dict) -> str:
    peak = largest_rss(row["peak_rss_mb"])
    files = sum(t["data_files"] for t in row["tables"].values())
    entries = sum(t["log_entries"] for t in row["tables"].values())
    return (
        f"{row['photos_per_second']:.1f} photos/s, peak RSS {peak:.0f} MB, {files} data files, "
        f"{entries} log entries, open {row['open_seconds'] * 1000:.0f} ms, resume "
        f"{row['resume_seconds'] * 1000:.0f} ms, report {row['report_seconds']:.1f} s and "
        f"{row.get('report_peak_rss_mb')} MB, stages "
        f"{sum(row.get('stage_seconds_per_photo', {}).values()) * 1000:.1f} ms a photo, "
        f"rate of the 9th tenth / the 2nd {row.get('late_to_early_rate')}, "
        f"failures rows {row['failures_by_kind']} for {row['bad_inputs']} truncated inputs"
        + (
            f", {row['dead_letter_records']} dead-letter records"
            if "dead_letter_records" in row
            else ""
        )
    )
