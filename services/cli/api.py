"""`trapline api`: serve the upload API; add programs and tokens, assign deployment ids."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from trapline.services.settings import load_settings

console = Console(stderr=True)

api_app = typer.Typer(
    help="The self-service upload API (docs/api.md).", invoke_without_command=True
)


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

    from trapline.services.api.ray_serve import serve_api

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


@api_app.command("assign-deployment")
def api_assign_deployment(
    deployment_id: str = typer.Argument(..., help="The deployment id, as in the result tables."),
    program: str = typer.Option(..., "--program", help="The program it belongs to."),
    utc_offset: str | None = typer.Option(
        None, help="The camera clock's zone ('+01:00' or 'Europe/Paris'); else deployments_file's."
    ),
    take_from: str | None = typer.Option(
        None, help="Move the id from this program, which holds it now."
    ),
    config: Path | None = typer.Option(None, help="YAML settings file."),
    registry: str | None = typer.Option(None, help="Registry path or URL (TRAPLINE_API_REGISTRY)."),
) -> None:
    """Give a deployment id to a program: the way for ids that already have photos or results.

    Programs cannot claim such ids through the API (docs/security.md). The deployment's fields
    come from `deployments_file` when it lists the id, else only the id and --utc-offset.
    """
    import re
    from dataclasses import replace

    from trapline.pipelines.deployments import (
        Deployment,
        DeploymentsError,
        load_deployments,
        parse_timezone,
    )
    from trapline.services.adapters.object_store import configure_fsspec
    from trapline.services.api.registry import Registry, RegistryError
    from trapline.services.api.schemas import ID_REGEX

    settings = load_settings(config, api_registry=registry)
    configure_fsspec(settings)
    try:
        if not re.fullmatch(ID_REGEX, deployment_id):
            raise RegistryError(f"deployment id {deployment_id!r}: not a valid id ({ID_REGEX})")
        if utc_offset is not None:
            parse_timezone(utc_offset)
        known = load_deployments(settings.deployments_file).get(deployment_id)
        deployment = known or Deployment(deployment_id)
        if utc_offset is not None:
            deployment = replace(deployment, utc_offset=utc_offset)
        Registry(settings.api_registry).assign_deployment(program, deployment, take_from=take_from)
    except (RegistryError, DeploymentsError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(f"deployment {deployment_id!r} belongs to program {program!r}")


def _api_token(name: str, config: Path | None, registry: str | None, *, new_program: bool) -> None:
    from trapline.services.adapters.object_store import configure_fsspec
    from trapline.services.api.registry import Registry, RegistryError

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
