"""The benchmark's outputs: one JSON with every figure, one PNG to look at, a few printed lines.

The stream/folder ratio, the headline (pipeline efficiency: the workers' share of time inside the
stages, measured in the run, <= 1 by construction) and the speed-up over the naive loop are
printed last, so a reader of a CI log or a terminal sees them first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Every top-level field of the JSON, in order; tests check the JSON against this list.
REPORT_FIELDS = (
    "started_at", "host", "photos", "size", "cores", "settings", "stage_seconds_per_photo",
    "stage_seconds_per_photo_before_after", "stage_cost_drift", "ideal_photos_per_second", "decode_variants_seconds_per_photo", "naive_photos_per_second",
    "folder", "scaling", "stream", "stream_to_folder", "throughput_over_stage_costs_alone", "pipeline_efficiency", "speedup_over_naive", "gpu",
)  # fmt: skip
FOLDER_FIELDS = (
    "workers", "photos", "processed", "failed", "photos_per_second_steady",
    "photos_per_second_overall", "startup_seconds", "wall_seconds", "mean_batch_fill", "stage_busy_share", "photos_per_node",
    "stage_seconds_per_photo", "bytes_read_per_photo", "bytes_written_per_photo", "processes",
    "ray_system_rss_mb_peak", "cpu", "timeline",
)  # fmt: skip
# Both benches add "inspected" (the output's own measurements) when asked to (--mode growth).
STREAM_FIELDS = (
    "events", "rate_requested", "workers", "partitions", "batch_max_records",
    "commit_interval_s", "batch_size", "storage", "placement", "rows_written", "media_rows",
    "events_per_second", "processed_per_second", "hold_tail_seconds", "stage_busy_share",
    "latency_seconds", "lag_max", "lag_final", "mean_batch_fill",
    "stage_seconds_per_photo", "bytes_read_per_photo", "bytes_written_per_photo",
    "event_bytes_per_photo", "processes", "rss_timeline_mb", "timeline", "latency_timeline",
    "dead_letter_records", "per_worker",
)  # fmt: skip


def rate_series(points: list[list[float]], column: int):
    """(t, per-second rate of `column`) over a sliding window, from cumulative counts."""
    if len(points) < 2:
        return [], []
    t = np.array([p[0] for p in points], dtype=float)
    window_s = float(np.clip(t[-1] / 15, 0.5, 5.0))
    v = np.array([p[column] for p in points], dtype=float)
    grid = np.arange(window_s, t[-1] + 1e-9, window_s / 4)
    if not len(grid):
        return [], []
    now = np.interp(grid, t, v)
    before = np.interp(grid - window_s, t, v)
    return grid.tolist(), ((now - before) / window_s).tolist()


def write_json(report: dict, folder: Path) -> Path:
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def write_png(report: dict, out_dir: Path) -> Path:
    """Throughput and latency over time (folder runs, stream runs), lag, and the stage costs."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    ax = axes[0][0]
    for run in report.get("scaling", []):
        t, rate = rate_series(run["timeline"], 1)
        ax.plot(
            t,
            rate,
            label=f"{run['workers']} worker(s): {run['photos_per_second_steady']:.1f}/s steady",
        )
    ax.axhline(
        report["ideal_photos_per_second"], color="grey", ls="--", label="ideal from stage costs"
    )
    ax.axhline(report["naive_photos_per_second"], color="red", ls=":", label="naive loop")
    ax.set(
        title="Folder mode: throughput over time", xlabel="seconds since start", ylabel="photos/s"
    )
    ax.legend(fontsize=8)

    ax, lag_ax = axes[0][1], axes[1][0]
    for name, run in report.get("stream", {}).items():
        t, rate = rate_series(run["timeline"], 2)
        ax.plot(t, rate, label=f"{name}: written/s ({run['events_per_second']:.1f} overall)")
        t, rate = rate_series(run["timeline"], 1)
        ax.plot(t, rate, ls=":", label=f"{name}: produced/s")
        times = [p[0] for p in run["timeline"]]
        lag_ax.plot(times, [p[1] - p[2] for p in run["timeline"]], label=f"{name}: lag (events)")
        if run["latency_timeline"]:
            finish, latency = zip(*run["latency_timeline"])
            lag_ax.scatter(finish, latency, s=4, alpha=0.5, label=f"{name}: latency (s)")
    ax.set(
        title="Stream mode: throughput over time",
        xlabel="seconds since first event",
        ylabel="events/s",
    )
    ax.legend(fontsize=8)
    lag_ax.set(
        title="Stream mode: consumer lag and end-to-end latency",
        xlabel="seconds since first event",
        ylabel="events / seconds",
    )
    lag_ax.legend(fontsize=8)

    ax = axes[1][1]
    alone = report["stage_seconds_per_photo"]
    stages = list(alone)
    x = np.arange(len(stages))
    ax.bar(x - 0.2, [alone[s] * 1000 for s in stages], 0.4, label="alone, one thread")
    folder = report.get("folder") or {}
    inside = folder.get("stage_seconds_per_photo", {})
    ax.bar(x + 0.2, [inside.get(s, 0) * 1000 for s in stages], 0.4, label="inside the pipeline")
    ax.set_xticks(x, stages)
    ax.set(
        title=f"Stage cost per photo (efficiency {report['pipeline_efficiency']})",
        ylabel="ms/photo",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "report.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_growth_png(result: dict, out_dir: Path) -> Path:
    """`--mode growth`: photos/s, peak RSS, open/resume times and report time against photos,
    one line per mode (log x axis); flat lines are the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from load_tests.growth import largest_rss

    panels = [
        ("photos/s", lambda r: r["photos_per_second"]),
        ("peak RSS of the largest process (MB)", lambda r: largest_rss(r["peak_rss_mb"])),
        ("open the tables (ms)", lambda r: r["open_seconds"] * 1000),
        ("resume (ms)", lambda r: r["resume_seconds"] * 1000),
        ("data files, all tables", lambda r: sum(t["data_files"] for t in r["tables"].values())),
        ("report build (s)", lambda r: r["report_seconds"]),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(14, 11))
    for ax, (title, value) in zip(axes.flat, panels):
        for mode in ("folder", "stream"):
            runs = result.get(mode, {}).get("runs", [])
            if runs:
                ax.plot([r["photos"] for r in runs], [value(r) for r in runs], "o-", label=mode)
        ax.set_xscale("log")
        ax.set(title=title, xlabel="photos")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    # The largest run's RSS over time, per process: does memory climb with the work or step once?
    for ax, mode in zip(axes.flat[len(panels) :], ("folder", "stream")):
        runs = result.get(mode, {}).get("runs", [])
        timelines = runs[-1].get("rss_timeline_mb", {}) if runs else {}
        for role, points in sorted(timelines.items()):
            ax.plot([t for t, _ in points], [mb for _, mb in points], label=role)
        photos = f"{runs[-1]['photos']:,} photos" if runs else "not run"
        ax.set(title=f"{mode}: RSS over the run, {photos} (MB)", xlabel="seconds")
        ax.set_ylim(bottom=0)
        if timelines:
            ax.legend(fontsize=8)
    for ax in axes.flat[len(panels) + 2 :]:
        ax.axis("off")
    fig.tight_layout()
    path = out_dir / "growth.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def headline(report: dict) -> list[str]:
    """The closing lines: details first, the headline ratio and the speed-up last."""
    lines = []
    for run in report.get("scaling", []):
        cpu = run["cpu"]
        lines.append(
            f"folder, {run['workers']} worker(s): {run['photos_per_second_steady']:.2f} photos/s steady; "
            f"core share {cpu['core_share']} (idle {cpu['machine_idle_share']}, other users "
            f"{cpu['other_users_share']}), work efficiency {cpu['work_efficiency']}, efficiency on "
            f"the cores available {cpu['efficiency_on_cores_available']}"
        )
    for name, run in report.get("stream", {}).items():
        lat = run["latency_seconds"]
        lines.append(
            f"stream {name}: {run['processed_per_second']:.2f} events/s processed, "
            f"{run['events_per_second']:.2f} counting the last hold ({run['hold_tail_seconds']} s), "
            f"stage busy share {run['stage_busy_share']}, latency p50 {lat['p50']} s "
            f"p95 {lat['p95']} s p99 {lat['p99']} s, max lag {run['lag_max']} events"
            + (
                f"   [paced: p99 target <= hold + 2 s = {report['settings']['sequence_hold_s'] + 2:g} s]"
                if name == "paced" and "sequence_hold_s" in report.get("settings", {})
                else ""
            )
        )
    drift = report.get("stage_cost_drift")
    drift_note = (
        f" (stage costs drifted {drift:.0%} between before and after)" if drift is not None else ""
    )
    lines.append(
        f"ideal from stage costs measured alone: {report['ideal_photos_per_second']:.2f} photos/s{drift_note}, "
        f"throughput / that = {report['throughput_over_stage_costs_alone']:.3f} (not a bound); "
        f"naive loop {report['naive_photos_per_second']:.2f} photos/s"
    )
    ratio = report.get("stream_to_folder")
    if ratio:
        lines.append(
            f"stream / folder, saturated, same photos and cores: {ratio['processed']:.3f} processed   "
            f"[target >= 0.9]; {ratio['rows_readable']:.3f} counting the rows' last event hold"
        )
    efficiency = report["pipeline_efficiency"]
    lines.append(
        "pipeline efficiency (headline): "
        + (f"{efficiency:.3f}" if efficiency is not None else "n/a")
        + "   [workers' time in the stages, timed in this run; <= 1 by construction; target >= 0.9]"
    )
    lines.append(
        f"speed-up over the naive MegaDetector-style loop: {report['speedup_over_naive']:.2f}x"
    )
    return lines
