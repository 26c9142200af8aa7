"""The `trapline` command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trapline.models.importers.cli import fetch_command, identify_command, import_app
from trapline.services.exports.commands import export_app
from trapline.services.settings import DEMO_MODELS, load_settings

app = typer.Typer(help="Camera-trap photos in, species tables out.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def run(
    source: str = typer.Argument(..., help="Folder or fsspec URL (s3://bucket/prefix) of photos."),
    out: str = typer.Option("results", "--out", "-o", help="Folder or fsspec URL for the tables."),
    config: Path | None = typer.Option(None, help="YAML settings file."),
    workers: int | None = typer.Option(None, help="Ray workers; 0 = in-process."),
    batch_size: int | None = typer.Option(None, help="Photos per detector batch."),
    detector: Path | None = typer.Option(
        None,
        help="Detector: an ONNX file (with .json sidecar) or a release name (`trapline models fetch --list`).",
    ),
    classifier: Path | None = typer.Option(
        None, help="Classifier: an ONNX file (with .json sidecar) or a release name."
    ),
    json_summary: Path | None = typer.Option(
        None, "--json-summary", help="Also write the summary as JSON."
    ),
    deployments: str | None = typer.Option(
        None, help="Deployments file (CSV/YAML/JSON): each camera's UTC offset, place, period."
    ),
) -> None:
    """Detect and classify every photo under SOURCE; write media/observations/events/failures tables."""
    from trapline.services.reaper import start_reaper
    from trapline.services.runner import run_folder

    settings = load_settings(
        config, workers=workers, batch_size=batch_size, detector_model=detector,
        classifier_model=classifier, deployments_file=deployments,
    )  # fmt: skip
    if settings.workers > 0:  # the local Ray's helpers end with this process, however it ends
        start_reaper()
    with Progress(
        TextColumn("[bold]photos"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as progress:  # fmt: skip
        task = progress.add_task("photos", total=None)
        summary = run_folder(
            source,
            out,
            settings,
            lambda done, total: progress.update(task, completed=done, total=total),
        )
    _print_summary(summary, out)
    if json_summary:
        json_summary.write_text(json.dumps(summary_dict(summary), indent=2))


def summary_dict(summary) -> dict:
    return {
        "files": summary.files,
        "processed": summary.processed,
        "failed": summary.failed,
        "already_done": summary.already_done,
        "events": summary.events,
        "observation_types": dict(summary.observation_types),
        "detections": dict(summary.detections),
        "labels": dict(summary.labels.most_common()),
        "event_labels": dict(summary.event_labels.most_common()),
        "failure_kinds": dict(summary.failure_kinds),
        "stage_seconds": {k: round(v, 3) for k, v in summary.stage_seconds.items()},
        "bytes_read": summary.bytes_read,
        "wall_seconds": round(summary.wall_seconds, 3),
        "startup_seconds": round(summary.startup_seconds, 3),
        "photos_per_second": round(summary.photos_per_second, 2),
        "steady_photos_per_second": round(summary.steady_photos_per_second, 2),
    }


def _print_summary(summary, out: str) -> None:
    table = Table(title="trapline run", show_header=False)
    table.add_row("photos read", f"{summary.files}")
    table.add_row("processed (media rows)", f"{summary.processed}")
    table.add_row(
        "failed (failures rows)", f"{summary.failed}  {dict(summary.failure_kinds) or ''}"
    )
    if summary.already_done:
        table.add_row(
            "already in the tables",
            f"{summary.already_done} (committed by an earlier run: skipped)",
        )
    types = summary.observation_types
    table.add_row(
        "blank / animal / human / vehicle",
        f"{types['blank']} / {types['animal']} / {types['human']} / {types['vehicle']}",
    )
    table.add_row("events (sequences)", f"{summary.events}")
    top = ", ".join(f"{label} {count}" for label, count in summary.event_labels.most_common(8))
    table.add_row("top event labels", top or "-")
    table.add_row(
        "throughput",
        f"{summary.photos_per_second:.1f} photos/s over {summary.wall_seconds:.1f} s; "
        f"{summary.steady_photos_per_second:.1f} photos/s after {summary.startup_seconds:.1f} s start-up",
    )
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in summary.stage_seconds.items())
    table.add_row("stage time (all workers)", stages)
    table.add_row("tables", out)
    Console().print(table)


# ---- BEGIN: paste into services/cli.py ----
@app.command()
def submit(
    source: str = typer.Argument(..., help="Folder or fsspec URL (s3://bucket/prefix) of photos."),
    deployment: str | None = typer.Option(
        None,
        "--deployment",
        "-d",
        help="Deployment id of every photo (letters, digits, - _ . :); default: each photo's first folder below SOURCE.",
    ),
    bootstrap: str = typer.Option(
        "127.0.0.1:9092",
        envvar="TRAPLINE_KAFKA_BOOTSTRAP",
        help="Kafka bootstrap servers, host:port[,host:port].",
    ),
    topic: str = typer.Option(
        "trapline.uploads", envvar="TRAPLINE_UPLOADS_TOPIC", help="Topic of upload events."
    ),
    copy_to: str | None = typer.Option(
        None,
        "--copy-to",
        help="Copy each photo first to COPY_TO/DEPLOYMENT/SHA256.ext (fsspec URL) and point the event there; "
        "use it when the workers cannot read SOURCE.",
    ),
    create_topic: int = typer.Option(
        0, help="Create the topic with this many partitions if it is missing (0: don't)."
    ),
    threads: int = typer.Option(4, min=1, help="Photos read, hashed and copied in parallel."),
    rate: float | None = typer.Option(
        None, min=0.001, help="At most this many events per second (default: no limit)."
    ),
    security_protocol: str | None = typer.Option(
        None,
        envvar="TRAPLINE_KAFKA_SECURITY_PROTOCOL",
        help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    ),
    sasl_mechanism: str | None = typer.Option(
        None, envvar="TRAPLINE_KAFKA_SASL_MECHANISM", help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    ),
    sasl_username: str | None = typer.Option(None, envvar="TRAPLINE_KAFKA_SASL_USERNAME"),
    sasl_password: str | None = typer.Option(
        None,
        envvar="TRAPLINE_KAFKA_SASL_PASSWORD",
        show_default=False,
        help="Prefer the environment variable: a flag lands in shell history.",
    ),
    ssl_cafile: Path | None = typer.Option(
        None, envvar="TRAPLINE_KAFKA_SSL_CAFILE", help="CA bundle of the brokers."
    ),
    json_summary: Path | None = typer.Option(
        None, "--json-summary", help="Also write the report as JSON."
    ),
) -> None:
    """Send one upload event per photo under SOURCE to Kafka (media_id = sha256 of the bytes)."""
    from trapline.services import kafka_io
    from trapline.services.submit import submit_folder

    given = {
        "security_protocol": security_protocol, "sasl_mechanism": sasl_mechanism,
        "sasl_plain_username": sasl_username, "sasl_plain_password": sasl_password,
        "ssl_cafile": str(ssl_cafile) if ssl_cafile else None,
    }  # fmt: skip
    security = {name: value for name, value in given.items() if value}  # empty env vars = unset
    try:
        if create_topic:
            kafka_io.ensure_topics(bootstrap, [topic], create_topic, **security)
        with Progress(
            TextColumn("[bold]submitted"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        ) as progress:  # fmt: skip
            task = progress.add_task("submit", total=None)
            report = submit_folder(
                source, bootstrap, topic, deployment, copy_to, threads=threads, security=security, rate=rate,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )  # fmt: skip
    except (FileNotFoundError, ValueError, kafka_io.KafkaUnavailable) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    table = Table(title="trapline submit", show_header=False)
    table.add_row("photos listed", f"{report.files}")
    table.add_row("events delivered", f"{report.submitted} to {report.topic} on {bootstrap}")
    if copy_to:
        table.add_row(
            "copied / already there", f"{report.copied} / {report.already_copied} under {copy_to}"
        )
    table.add_row("not submitted (listed below)", f"{report.failed}")
    table.add_row("hidden files skipped", f"{report.hidden}")
    table.add_row("time", f"{report.seconds:.1f} s ({report.bytes_read / 1e6:.1f} MB read)")
    Console().print(table)
    for failure in report.failures[:20]:
        console.print(f"[yellow]{failure.stage}/{failure.kind}[/yellow] {failure.message}")
    if report.failed > 20:
        console.print(f"... and {report.failed - 20} more (see --json-summary)")
    if json_summary:
        json_summary.write_text(json.dumps({
            "topic": report.topic, "files": report.files, "submitted": report.submitted,
            "copied": report.copied, "already_copied": report.already_copied, "hidden": report.hidden,
            "bytes_read": report.bytes_read, "seconds": round(report.seconds, 3),
            "failures": [{"uri": f.uri, "stage": f.stage, "kind": f.kind, "message": f.message} for f in report.failures],
        }, indent=2))  # fmt: skip
    # Unsupported file types (sidecars, videos) are listed but do not fail the command.
    if any(f.stage != "source" for f in report.failures):
        raise typer.Exit(1)


# ---- END ----


@app.command()
def serve(
    out: str = typer.Option(
        ..., "--out", "-o", help="Folder or fsspec URL (s3://bucket/results) for the tables."
    ),
    config: Path | None = typer.Option(None, help="YAML settings file."),
    workers: int | None = typer.Option(None, help="Consumers (Ray actors); 0 = one, in-process."),
) -> None:
    """Consume upload events from Kafka and write each row exactly once, until SIGTERM."""
    import logging

    from trapline.services.log_format import configure_json_logging
    from trapline.services.object_store import describe_storage
    from trapline.services.reaper import start_reaper
    from trapline.services.serve_roots import StorageRootsError, with_serve_roots
    from trapline.services.stream import ordinal_slot
    from trapline.services.stream import serve as serve_forever

    configure_json_logging()  # one JSON object per line on stdout, the workers' lines too
    try:
        settings = with_serve_roots(load_settings(config, workers=workers), out)
        ordinal_slot(settings, 0)  # ordinal assignment: refuse an unknown or too large ordinal
    except (StorageRootsError, ValueError) as error:
        console.print(f"[red]trapline serve: {error}[/red]")
        raise typer.Exit(2) from None
    if settings.workers == 0:  # the one consumer is this process: its lines name it too
        configure_json_logging(worker=0)
    else:  # Ray's helpers end within seconds of this process, even after a kill -9
        start_reaper()
    console.print_json(json.dumps(settings.echo()))
    logging.getLogger("trapline.serve").info("tables: %s", describe_storage(out, settings))
    for stats in serve_forever(settings, out):
        console.print(stats)


@app.command()
def broker(port: int = typer.Option(9092, help="Loopback port to listen on.")) -> None:
    """Run a local Kafka-protocol broker (Tansu, in memory) for trying `submit` and `serve`."""
    import signal
    import time

    from trapline.services.local_servers import start_tansu

    def stop(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (kill, a supervisor) stops Tansu too, like Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    with start_tansu(port) as server:
        console.print(f"Tansu broker ready on {server.bootstrap} (in memory; Ctrl-C stops it)")
        try:
            while server.alive():
                time.sleep(1)
        except KeyboardInterrupt:
            pass


@app.command()
def evaluate(
    results: str = typer.Argument(..., help="Results folder written by `trapline run`."),
    truth: Path = typer.Option(
        Path("examples/ground_truth.csv"), help="Ground-truth CSV of the sample."
    ),
    min_iou: float = typer.Option(0.5, help="IoU for a detection to match a true box."),
) -> None:
    """Detector recall and classifier accuracy of a run against the sample's ground truth."""
    from trapline.services.evaluate import evaluate_run

    report = evaluate_run(results, truth, min_iou)
    Console().print_json(json.dumps(report))


@app.command("sort")
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
    from trapline.services.sort import sort_results

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


@app.command("report")
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
        from trapline.services.report import build_report

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


@app.command("review")
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
        "127.0.0.1", help="Address to listen on; the page has no sign-in, keep it on loopback."
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

    from trapline.services.object_store import configure_fsspec
    from trapline.services.review import serve_review
    from trapline.services.review_data import ReviewStore

    configure_fsspec(load_settings())  # s3:// endpoint and keys from TRAPLINE_S3_* / AWS_*
    name = (reviewer or getpass.getuser() or "").strip()
    store = ReviewStore(results, name, show_people=show_people, deployment_ids=deployment or None)
    meta = store.meta()
    console.print(
        f"reviewing {meta['total']:,} events of {results} as {name!r} "
        f"({meta['reviewed']:,} reviewed); people {'shown' if show_people else 'blurred'}\n"
        f"open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ (Ctrl-C to stop)"
    )
    serve_review(store, host, port)


@app.command()
def compact(
    results: str = typer.Argument(..., help="Results folder or URL."),
    table: list[str] = typer.Option(
        None, help="Only these tables (repeatable); default all (the reviews table too)."
    ),
    target_size_mb: int = typer.Option(128, help="Aim for files of about this size."),
    vacuum_hours: float | None = typer.Option(
        None,
        "--vacuum",
        help="Also delete files no version newer than this many hours reads (replaced or orphan files); at least 168 unless --force-retention.",
    ),
    force_retention: bool = typer.Option(
        False, help="Allow --vacuum below 168 h (nothing may read older versions)."
    ),
) -> None:
    """Delta OPTIMIZE (merge small files) and, with --vacuum, VACUUM; safe while workers write."""
    from trapline.services.compact import RetentionTooShort
    from trapline.services.compact import compact as run_compact
    from trapline.services.object_store import configure_fsspec

    configure_fsspec(load_settings())  # s3:// endpoint and keys from TRAPLINE_S3_* / AWS_*
    try:
        report = run_compact(results, table or None, target_size_mb, vacuum_hours, force_retention)
    except RetentionTooShort as error:
        console.print(f"[red]refused:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(
        f"optimized {', '.join(report.tables) or 'no tables'}: {report.files_removed} files -> "
        f"{report.files_added} in {report.partitions} partitions; vacuumed {report.vacuumed} files"
    )


models_app = typer.Typer(help="Model files and the Triton model repository.", no_args_is_help=True)
app.add_typer(models_app, name="models")
models_app.add_typer(import_app, name="import")  # models/importers/cli.py
models_app.command("identify")(identify_command)
models_app.command("fetch")(fetch_command)

app.add_typer(export_app, name="export")  # services/exports/commands.py


@models_app.command("build-repo")
def models_build_repo(
    out: Path = typer.Argument(..., help="Folder to write the Triton model repository into."),
    detector: Path = typer.Option(
        DEMO_MODELS / "detector.onnx", help="Detector ONNX file (with .json sidecar)."
    ),
    classifier: Path = typer.Option(
        DEMO_MODELS / "classifier.onnx", help="Classifier ONNX file (with .json sidecar)."
    ),
    backend: str = typer.Option(
        "onnxruntime",
        help="onnxruntime (official Triton image) or python (the local tritonserver from scripts/setup_triton.sh).",
    ),
    gpu: bool = typer.Option(
        False, "--gpu/--cpu", help="KIND_GPU instances (production) or KIND_CPU."
    ),
    fp16: bool = typer.Option(
        False, help="With --gpu: ONNX Runtime's TensorRT provider in FP16 (engines cached)."
    ),
    max_batch_size: int = typer.Option(32, min=1, help="Largest batch Triton forms or accepts."),
    max_queue_delay_us: int = typer.Option(
        2000, min=0, help="Longest a request waits for others to fill a batch."
    ),
    instances: int = typer.Option(1, min=1, help="Model instances per GPU (or on the CPU)."),
    nms: bool = typer.Option(
        True, "--nms/--no-nms", help="Run the detector's NMS on the server (answers of a few KB)."
    ),
    nms_iou: float = typer.Option(
        0.45,
        min=0.01,
        max=1.0,
        help="NMS IoU baked into the detector graph (keep equal to nms_iou).",
    ),
    triton_venv: Path | None = typer.Option(
        None,
        help="--backend python: the Triton venv (default .venv-triton or $TRAPLINE_TRITON_VENV).",
    ),
) -> None:
    """Write a Triton model repository (uint8 inputs, normalisation and NMS in the graphs)."""
    from trapline.models.contracts import ModelContractError
    from trapline.models.triton_repository import RepositoryOptions, build_repository
    from trapline.services.triton_server import TritonSetupError, triton_install

    if backend not in ("onnxruntime", "python"):
        raise typer.BadParameter("--backend must be onnxruntime or python")
    preferred = tuple(b for b in (8, 16, 32) if b <= max_batch_size) or (max_batch_size,)
    options = RepositoryOptions(
        max_batch_size=max_batch_size, preferred_batch_sizes=preferred,
        max_queue_delay_us=max_queue_delay_us, instances=instances, nms=nms, nms_iou=nms_iou, fp16=fp16,
    )  # fmt: skip
    try:
        site = triton_install(triton_venv).site_packages if backend == "python" else None
        repo = build_repository(
            detector, classifier, out, backend=backend, gpu=gpu,  # type: ignore[arg-type]
            options=options, python_site_packages=site,
        )  # fmt: skip
    except (ModelContractError, TritonSetupError, ModuleNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {repo}: {options.detector_name}, {options.classifier_name} "
        f"({backend} backend, {'GPU' if gpu else 'CPU'})"
    )


@app.command("tables-doc")
def tables_doc(docs: Path = typer.Option(Path("docs"), help="The docs folder.")) -> None:
    """Write the table reference (docs/tables.md, docs/tables/*.md) from the schemas."""
    from trapline.services.docs import write_pages

    for path in write_pages(docs):
        console.print(f"wrote {path}")


@app.command("postprocess-report")
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


api_app = typer.Typer(
    help="The self-service upload API (docs/api.md).", invoke_without_command=True
)
app.add_typer(api_app, name="api")


@api_app.callback()
def api(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, help="YAML settings file."),
    host: str | None = typer.Option(None, help="Address to listen on (TRAPLINE_API_HOST)."),
    port: int | None = typer.Option(None, help="Port to listen on (TRAPLINE_API_PORT)."),
) -> None:
    """Serve the upload API on Ray Serve (with no subcommand), until SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from trapline.services.api_serve import serve_api

    logging.basicConfig(
        level=logging.INFO,
        format='{"level": "%(levelname)s", "logger": "%(name)s", "message": "%(message)s"}',
    )
    settings = load_settings(config, api_host=host, api_port=port)
    console.print_json(json.dumps(settings.echo()))
    serve_api(settings)


@api_app.command("add-program")
def api_add_program(
    name: str = typer.Argument(..., help="Program name: lower-case letters, digits and '-'."),
    config: Path | None = typer.Option(None, help="YAML settings file."),
    registry: str | None = typer.Option(None, help="Registry path or URL (TRAPLINE_API_REGISTRY)."),
) -> None:
    """Create a program and print its API token once (only its hash is stored)."""
    _api_token(name, config, registry, new_program=True)


@api_app.command("add-token")
def api_add_token(
    name: str = typer.Argument(..., help="An existing program."),
    config: Path | None = typer.Option(None, help="YAML settings file."),
    registry: str | None = typer.Option(None, help="Registry path or URL (TRAPLINE_API_REGISTRY)."),
) -> None:
    """Give a program another token (rotation); print it once."""
    _api_token(name, config, registry, new_program=False)


def _api_token(name: str, config: Path | None, registry: str | None, *, new_program: bool) -> None:
    from trapline.services.api_registry import Registry, RegistryError
    from trapline.services.object_store import configure_fsspec

    settings = load_settings(config, api_registry=registry)
    configure_fsspec(settings)
    store = Registry(settings.api_registry)
    try:
        token = store.add_program(name) if new_program else store.add_token(name)
    except RegistryError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(
        f"token for program {name!r} (shown once; only its sha256 is stored in {settings.api_registry}):"
    )
    typer.echo(token)


demo = typer.Typer(help="The demo models and the sample photos.", no_args_is_help=True)
app.add_typer(demo, name="demo")


@demo.command("photos")
def demo_photos(out: Path = typer.Argument(Path("examples/photos")), seed: int = 7) -> None:
    """Generate the synthetic sample photos (and examples/ground_truth.csv)."""
    from trapline.models.demo.sample import write_sample_photos

    rows = write_sample_photos(out, seed=seed)
    console.print(f"wrote {len(rows)} files under {out}")
