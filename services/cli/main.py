"""The `trapline` command line: the run modes here, every other command group beside it.

- here: `run` (a folder), `submit` (upload messages to Kafka), `serve` (stream workers), `broker`, `demo`;
- tools.py: the commands that read results (report, sort, review, evaluate, compact, ...);
- models.py: `models import | identify | fetch | build-repo`; export.py: `export ...`; api.py: `api ...`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trapline.services.cli import tools
from trapline.services.cli.api import api_app
from trapline.services.cli.export import export_app
from trapline.services.cli.models import models_app
from trapline.services.settings import load_settings

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
    from trapline.services.run.folder import run_folder
    from trapline.services.run.folder_tables import StreamTables
    from trapline.services.run.reaper import start_reaper

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
        try:
            summary = run_folder(
                source,
                out,
                settings,
                lambda done, total: progress.update(task, completed=done, total=total),
            )
        except StreamTables as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(2) from None
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


@app.command()
def submit(
    source: str = typer.Argument(..., help="Folder or fsspec URL (s3://bucket/prefix) of photos."),
    deployment: str | None = typer.Option(
        None,
        "--deployment",
        "-d",
        help="Deployment id of every photo (letters, digits, - _ . :); default: each photo's first folder below SOURCE.",
    ),
    bootstrap: str | None = typer.Option(
        None, help="Kafka bootstrap servers, host:port[,...] (setting kafka_bootstrap)."
    ),
    topic: str | None = typer.Option(
        None, help="Topic of upload messages (setting uploads_topic)."
    ),
    config: Path | None = typer.Option(
        None, help="YAML settings file: Kafka address, topic and security (TRAPLINE_KAFKA_*)."
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
    json_summary: Path | None = typer.Option(
        None, "--json-summary", help="Also write the report as JSON."
    ),
) -> None:
    """Send one upload message per photo under SOURCE to Kafka (media_id = sha256 of the bytes).

    Kafka security comes from the settings, as for the workers: TRAPLINE_KAFKA_SECURITY_PROTOCOL,
    TRAPLINE_KAFKA_SASL_* and TRAPLINE_KAFKA_SSL_CAFILE, or the YAML file."""
    from trapline.services.adapters import kafka_io
    from trapline.services.tools.submit import submit_folder

    # The same Kafka settings as the workers (services/settings.py): address, topic, TLS and SASL.
    settings = load_settings(config, kafka_bootstrap=bootstrap, uploads_topic=topic)
    bootstrap, topic, security = (
        settings.kafka_bootstrap,
        settings.uploads_topic,
        settings.kafka_security(),
    )
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


@app.command()
def serve(
    out: str = typer.Option(
        ..., "--out", "-o", help="Folder or fsspec URL (s3://bucket/results) for the tables."
    ),
    config: Path | None = typer.Option(None, help="YAML settings file."),
    workers: int | None = typer.Option(None, help="Consumers (Ray actors); 0 = one, in-process."),
) -> None:
    """Consume upload messages from Kafka and write each row exactly once, until SIGTERM."""
    import logging

    from trapline.services.adapters.object_store import describe_storage
    from trapline.services.run.log_format import configure_json_logging
    from trapline.services.run.membership import ordinal_slot
    from trapline.services.run.reaper import start_reaper
    from trapline.services.run.serve import serve as serve_forever
    from trapline.services.run.serve_roots import StorageRootsError, with_serve_roots

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

    from trapline.services.devstack.tansu import start_tansu

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


for _name, _command in tools.COMMANDS.items():
    app.command(_name)(_command)
app.add_typer(models_app, name="models")
app.add_typer(export_app, name="export")
app.add_typer(api_app, name="api")

demo = typer.Typer(help="The demo models and the sample photos.", no_args_is_help=True)
app.add_typer(demo, name="demo")


@demo.command("photos")
def demo_photos(out: Path = typer.Argument(Path("examples/photos")), seed: int = 7) -> None:
    """Generate the synthetic sample photos (and examples/ground_truth.csv)."""
    from trapline.models.demo.sample import write_sample_photos

    rows = write_sample_photos(out, seed=seed)
    console.print(f"wrote {len(rows)} files under {out}")
