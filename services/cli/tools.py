"""`trapline report | sort | review | evaluate | compact | tables-doc | postprocess-report`:
the commands that read or reshape a run's results (services/tools/). main.py registers them."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from trapline.services.settings import load_settings

console = Console(stderr=True)


def evaluate(
    results: str = typer.Argument(..., help="Results folder written by `trapline run`."),
    truth: Path = typer.Option(
        Path("examples/ground_truth.csv"), help="Ground-truth CSV of the sample."
    ),
    min_iou: float = typer.Option(0.5, help="IoU for a detection to match a true box."),
) -> None:
    """Detector recall and classifier accuracy of a run against the sample's ground truth."""
    from trapline.services.tools.evaluate import evaluate_run

    report = evaluate_run(results, truth, min_iou)
    Console().print_json(json.dumps(report))


def sort_cmd(
    results: str = typer.Argument(
        ..., help="Results folder or URL written by `trapline run`/`serve`."
    ),
    into: str = typer.Option(..., "--into", help="Folder or fsspec URL to arrange the photos in."),
    copy: bool = typer.Option(False, "--copy", help="Copy the photos (the default)."),
    move: bool = typer.Option(
        False, "--move", help="Move the photos (the source is removed after the copy is written)."
    ),
    link: bool = typer.Option(
        False, "--link", help="Symbolic links to the photos (local folders only)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would be done; write nothing."
    ),
    blur_people: bool = typer.Option(
        False,
        "--blur-people",
        help="With --copy: photos with person detections are written with every person box blurred.",
    ),
) -> None:
    """Arrange photos in INTO/<label>/<deployment>/ by final label; never overwrites; safe to re-run.

    Final label: the event's label when the photo is in an animal event (a species, or
    `undefined` below the vote threshold), else the photo's observation type (blank, human,
    vehicle), else `undefined`. A log of every photo goes to INTO/_sort_logs/. See docs/report.md.
    """
    from trapline.services.tools.sort import sort_results

    if copy + move + link > 1:
        raise typer.BadParameter("choose one of --copy, --move, --link")
    mode = "move" if move else "link" if link else "copy"
    try:
        report = sort_results(results, into, mode, dry_run=dry_run, blur_people=blur_people)
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    table = Table(
        title=f"trapline sort ({mode}{', dry run' if dry_run else ''})", show_header=False
    )
    for label, count in sorted(report.folders.items()):
        table.add_row(label, f"{count}")
    table.add_row("status", ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items())))
    table.add_row("log", report.log or "(dry run: nothing written)")
    Console().print(table)
    for item in report.items:
        if dry_run:
            console.print(f"{item.action} {item.source} -> {item.destination}", soft_wrap=True)
        elif item.status == "failed":
            console.print(f"[yellow]failed[/yellow] {item.source}: {item.message}")
    if report.statuses.get("failed"):
        raise typer.Exit(1)


def report_cmd(
    results: str = typer.Argument(
        ..., help="Results folder or URL written by `trapline run`/`serve`."
    ),
    out: str = typer.Option(
        "report",
        "--out",
        "-o",
        help="Folder (or fsspec URL) for index.html, photos.csv, photos.xlsx.",
    ),
    deployments: str | None = typer.Option(
        None,
        help="Deployments file: each camera's zone (local times of day) and coordinates (the map).",
    ),
    json_summary: Path | None = typer.Option(
        None, "--json-summary", help="Also write the report's counts as JSON."
    ),
) -> None:
    """Write a self-contained HTML report (opens offline) and a per-photo spreadsheet. See docs/report.md."""
    from dataclasses import asdict

    from trapline.pipelines.deployments import DeploymentsError

    try:
        from trapline.services.tools.report import build_report

        summary = build_report(results, out, deployments)
    except (ModuleNotFoundError, DeploymentsError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(
        f"wrote {summary.html} ({len(summary.plots)} plots), {summary.csv}, {summary.xlsx}: "
        f"{summary.media} media, {summary.failures} failures"
    )
    if json_summary:
        json_summary.write_text(json.dumps(asdict(summary), indent=2))


def review_cmd(
    results: str = typer.Argument(
        ..., help="Results folder or URL written by `trapline run`/`serve`."
    ),
    reviewer: str | None = typer.Option(
        None,
        "--reviewer",
        "-r",
        help="Your name, recorded with every review (default: your login).",
    ),
    port: int = typer.Option(8765, help="Port of the local page (http://127.0.0.1:PORT/)."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to listen on. Beyond loopback (e.g. 0.0.0.0) only with --token.",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="TRAPLINE_REVIEW_TOKEN",
        help="Reviewers must give this token (a sign-in form, or Authorization: Bearer); "
        "needed to listen beyond loopback. At least 16 characters; prefer the variable "
        "(a command line is visible to other users of the machine).",
    ),
    show_people: bool = typer.Option(
        False,
        "--show-people",
        help="Show photos with people unblurred (only for reviewers allowed to see them).",
    ),
    deployment: list[str] = typer.Option(
        None, "--deployment", "-d", help="Only these deployments (repeatable)."
    ),
) -> None:
    """Review and correct the labels in a web page: events with photos and boxes, keyboard first.

    Each decision is appended to RESULTS/reviews (a Delta table; the latest review of an event
    wins); the report, `sort` and the exports use reviewed labels where they exist. See docs/review.md.
    """
    import getpass

    from trapline.services.adapters.object_store import configure_fsspec
    from trapline.services.tools.review import serve_review
    from trapline.services.tools.review_access import check_bind
    from trapline.services.tools.review_data import ReviewStore

    try:
        check_bind(host, token)
    except ValueError as error:
        console.print(str(error), style="red", markup=False)
        raise typer.Exit(2) from None
    configure_fsspec(load_settings())  # s3:// endpoint and keys from TRAPLINE_S3_* / AWS_*
    name = (reviewer or getpass.getuser() or "").strip()
    store = ReviewStore(results, name, show_people=show_people, deployment_ids=deployment or None)
    meta = store.meta()
    console.print(
        f"reviewing {meta['total']:,} events of {results} as {name!r} "
        f"({meta['reviewed']:,} reviewed); people {'shown' if show_people else 'blurred'}\n"
        f"open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ (Ctrl-C to stop)"
        + ("; reviewers sign in with the token" if token else "")
    )
    serve_review(store, host, port, token)


def compact(
    results: str = typer.Argument(..., help="Results folder or URL."),
    table: list[str] = typer.Option(
        None, help="Only these tables (repeatable); default all (the reviews table too)."
    ),
    target_size_mb: int = typer.Option(128, help="Aim for files of about this size."),
    vacuum_hours: float | None = typer.Option(
        None,
        "--vacuum",
        help="Also delete files no version newer than this many hours reads (replaced or orphan files); at least 168 unless --force-retention; never files changed in the last hour; rounded up to whole hours.",
    ),
    force_retention: bool = typer.Option(
        False, help="Allow --vacuum below 168 h (nothing may read older versions)."
    ),
    wait: float = typer.Option(
        0,
        "--wait",
        help="When another compaction holds the lease, wait up to this many seconds for it (default: refuse at once).",
    ),
    lease_minutes: float = typer.Option(
        10, help="The compaction lease's time to live: how long a crashed run blocks others."
    ),
) -> None:
    """Delta OPTIMIZE (merge small files) and, with --vacuum, VACUUM; safe while workers write
    (one compaction at a time: it holds the compaction lease, docs/operations.md)."""
    from datetime import timedelta

    from trapline.pipelines.compaction import OverlapNotRepaired
    from trapline.pipelines.compaction_lease import LeaseHeld, LeaseLost
    from trapline.services.adapters.object_store import configure_fsspec
    from trapline.services.tools.compact import RetentionTooShort
    from trapline.services.tools.compact import compact as run_compact

    configure_fsspec(load_settings())  # s3:// endpoint and keys from TRAPLINE_S3_* / AWS_*
    try:
        report = run_compact(
            results,
            table or None,
            target_size_mb,
            vacuum_hours,
            force_retention,
            wait=timedelta(seconds=wait),
            lease_ttl=timedelta(minutes=lease_minutes),
        )
    except RetentionTooShort as error:
        console.print(f"[red]refused:[/red] {error}")
        raise typer.Exit(2) from None
    except LeaseHeld as error:
        console.print(
            f"[red]refused:[/red] {error}. Another compaction is running (a worker's, or another "
            "`trapline compact`): try again later or pass --wait SECONDS."
        )
        raise typer.Exit(3) from None
    except LeaseLost as error:
        console.print(f"[red]stopped:[/red] {error}. Raise --lease-minutes.")
        raise typer.Exit(3) from None
    except OverlapNotRepaired as error:
        console.print(f"[red]rows read twice:[/red] {error} (docs/operations.md, Compaction)")
        raise typer.Exit(4) from None
    console.print(
        f"optimized {', '.join(report.tables) or 'no tables'}: {report.files_removed} files -> "
        f"{report.files_added} in {report.partitions} partitions; vacuumed {report.vacuumed} files"
    )
    if report.repaired:
        console.print(
            f"[red]repaired:[/red] {', '.join(report.repaired)}: an OPTIMIZE overlapped another "
            "(rows were read twice for a moment; see the log)"
        )


def tables_doc(docs: Path = typer.Option(Path("docs"), help="The docs folder.")) -> None:
    """Write the table reference (docs/tables.md, docs/tables/*.md) from the schemas."""
    from trapline.services.tools.tables_doc import write_pages

    for path in write_pages(docs):
        console.print(f"wrote {path}")


def postprocess_report(
    results: str = typer.Argument(..., help="Results folder or fsspec URL (the tables of a run)."),
    csv_out: Path | None = typer.Option(
        None, "--csv", help="Also write the rows to this CSV file."
    ),
) -> None:
    """Static (repeat) detections suppressed per deployment, for review (docs/postprocessing.md)."""
    from rich.table import Table

    from trapline.pipelines.postprocess.report import static_report, to_csv

    rows = static_report(results)
    table = Table(
        "deployment", "group", "category", "photos", "first", "last", "box x,y,w,h", "examples"
    )
    for r in rows:
        box = ",".join(f"{r[k]:.2f}" for k in ("bbox_x", "bbox_y", "bbox_width", "bbox_height"))
        table.add_row(r["deployment_id"], r["static_group"], r["category"], str(r["photos"]),
                      r["first"] or "-", r["last"] or "-", box, r["examples"].replace(" ", "\n"))  # fmt: skip
    console.print(table if rows else "no static detections")
    if csv_out is not None:
        csv_out.write_text(to_csv(rows))
        console.print(f"wrote {csv_out} ({len(rows)} rows)")


COMMANDS = {
    "evaluate": evaluate,
    "sort": sort_cmd,
    "report": report_cmd,
    "review": review_cmd,
    "compact": compact,
    "tables-doc": tables_doc,
    "postprocess-report": postprocess_report,
}
