"""`trapline export ...`: the typer sub-app (registered in services/cli/main.py).

The commands only parse options, configure S3 from the settings and print the report; the work
is in `camtrap_dp` and `megadetector`, imported when a command runs (the CLI starts fast).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

export_app = typer.Typer(
    help="Export results to Camtrap DP (GBIF) or MegaDetector JSON (Timelapse, AddaxAI).",
    no_args_is_help=True,
)
console = Console(stderr=True)


def _settings(config: Path | None, **overrides):
    from trapline.services.adapters.object_store import configure_fsspec
    from trapline.services.settings import load_settings

    settings = load_settings(config, **overrides)
    configure_fsspec(settings)  # s3:// results, deployments and outputs
    return settings


@export_app.command("camtrap-dp")
def camtrap_dp(
    results: str = typer.Argument(..., help="Results folder or URL (`trapline run --out`)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder or URL to write the package into."),
    deployments: str | None = typer.Option(
        None, help="Deployments file with coordinates (default: the deployments_file setting)."
    ),
    metadata: str | None = typer.Option(
        None, help="YAML with datapackage.json fields: contributors, licenses, project, ..."
    ),
    observation_level: str = typer.Option(
        "both", help="Observations per photo (media), per sequence (event), or both."
    ),
    media_url: str | None = typer.Option(
        None,
        help="Public URL prefix of the photos for filePath (default: their path relative to "
        "the folder given to `trapline run`).",
    ),
    base: str | None = typer.Option(
        None,
        help="Folder filePath is relative to (default: the folder given to `trapline run`).",
    ),
    draft: bool = typer.Option(
        False,
        "--draft",
        help="Write the package although its metadata (contributors, licences, project) is "
        "incomplete: placeholders, and a description saying what is missing.",
    ),
    reviews: bool = typer.Option(
        True, "--reviews/--no-reviews", help="Use reviewed labels where people reviewed."
    ),
    validate: bool = typer.Option(
        True, "--validate/--no-validate", help="Check against the official schemas."
    ),
    config: Path | None = typer.Option(None, help="YAML settings file (S3 options)."),
) -> None:
    """Write a Camtrap DP 1.0.2 package (datapackage.json, deployments, media, observations)."""
    from trapline.pipelines.deployments import DeploymentsError
    from trapline.services.tools.exports.camtrap_dp import export_camtrap_dp
    from trapline.services.tools.exports.common import ExportError

    try:
        settings = _settings(config, deployments_file=deployments)
        report = export_camtrap_dp(
            results, out, settings.deployments_file, metadata, observation_level, media_url,
            validate, draft=draft, reviews=reviews, base=base,
        )  # fmt: skip
    except (ExportError, DeploymentsError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    rows = ", ".join(f"{name} {count}" for name, count in report.rows.items())
    console.print(f"wrote {out}: {rows}; {report.not_public} photos not public (people)")
    if report.reviewed:
        console.print(f"{report.reviewed} reviewed events and boxes carry their reviewers' labels")
    if not media_url:
        where = report.base or "(their URIs)"
        console.print(f"filePath: relative to {where}; --media-url URL where they are published")
    for item in report.excluded.media[:20]:
        console.print(f"[yellow]left out[/yellow] {item['uri']}: {item['reason']}")
    for item in report.excluded.events[:20]:
        console.print(f"[yellow]left out[/yellow] event {item['event_id']}: {item['reason']}")
    if report.failures_not_exported:
        console.print(f"{report.failures_not_exported} failures rows have no place in Camtrap DP (see the failures table)")  # fmt: skip
    for note in report.notes:
        console.print(f"[yellow]note[/yellow] {note}")
    if report.draft:
        console.print(
            "[yellow]DRAFT, not for publication; fill in (--metadata FILE.yaml):[/yellow] "
            + "; ".join(report.to_fill_in)
        )
    if report.validation is not None:
        if not report.validation.valid:
            for error in report.validation.errors[:50]:
                console.print(f"[red]invalid[/red] {error}")
            console.print(f"{len(report.validation.errors)} errors against Camtrap DP 1.0.2")
            raise typer.Exit(1)
        kind = "a draft: schemas pass, metadata incomplete" if report.draft else "valid"
        console.print(f"{kind} Camtrap DP 1.0.2 ({report.validation.rows_checked} rows checked)")


@export_app.command("megadetector")
def megadetector(
    results: str = typer.Argument(..., help="Results folder or URL (`trapline run --out`)."),
    out: str = typer.Option(..., "--out", "-o", help="JSON file (path or URL) to write."),
    base: str | None = typer.Option(
        None,
        help="Folder the `file` paths are relative to (default: the folder given to `trapline run`).",
    ),
    reviews: bool = typer.Option(
        True, "--reviews/--no-reviews", help="Use reviewed labels where people reviewed."
    ),
    config: Path | None = typer.Option(None, help="YAML settings file (S3 options, thresholds)."),
) -> None:
    """Write MegaDetector batch output (format 1.6) with classifications and failures."""
    from trapline.services.tools.exports.common import ExportError
    from trapline.services.tools.exports.megadetector import export_megadetector

    try:
        settings = _settings(config)
        report = export_megadetector(
            results,
            out,
            base,
            settings.detection_threshold,
            settings.classification_threshold,
            reviews=reviews,
        )
    except (ExportError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(
        f"wrote {out}: {report.images} images ({report.processed} processed, {report.failed} "
        f"failed), {report.detections} detections; file paths relative to {report.base or '(none)'}"
    )
    if report.reviewed:
        console.print(f"{report.reviewed} reviewed: info.custom_metadata.reviewed")
    if report.not_listed:
        console.print(f"{len(report.not_listed)} failures of files already listed: info.custom_metadata.failures_not_listed")  # fmt: skip
