"""`trapline models import ...` and `trapline models identify`: the command-line side.

Exit codes: 2 the file is not what the command imports (or unreadable), 3 the file is a pickle
and --trust was not given, 4 the ONNX export disagrees with torch beyond the tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from trapline.services.settings import DEMO_MODELS

import_app = typer.Typer(
    help="Export a real checkpoint (pickle) to ONNX + sidecar; needs the `import` extra.",
    no_args_is_help=True,
)

_TRUST = typer.Option(
    False, "--trust", help="I trust this file: unpickle it (pickles can run code)."
)
_SAMPLES = typer.Option(2, min=1, help="Random batches compared, ONNX vs torch.")
_TOLERANCE = typer.Option(1e-3, min=0.0, help="Largest score/logit difference accepted.")


def _out(path: Path, out: Path | None) -> Path:
    return out or path.with_suffix(".onnx")


def _run(fn, path: Path, out: Path, **kwargs) -> None:
    try:
        from trapline.models.importers.identify import CheckpointError
        from trapline.models.importers.megadetector import TrustRequired
    except ImportError as error:  # torch missing
        typer.echo(f"error: importing weights needs the [import] extra ({error}): "
                   "pip install 'trapline[import]'", err=True)  # fmt: skip
        raise typer.Exit(2) from None
    try:
        result = fn(path, out, **kwargs)
    except TrustRequired as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3) from None
    except CheckpointError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(4 if "not trustworthy" in str(error) else 2) from None
    parity = result.parity
    typer.echo(
        f"wrote {result.onnx_path} and {result.onnx_path.with_suffix('.json').name}: "
        f"{result.sidecar['name']} {result.sidecar['version']}, input {result.sidecar['input_size']}; "
        f"ONNX vs torch over {parity.samples} random batches of {parity.batch}: "
        f"max |diff| {parity.max_abs_diff:.3g}"
        + (
            f" (scores {parity.max_abs_diff_scores:.3g}, boxes {parity.max_abs_diff_boxes_px:.3g} px)"
            if parity.max_abs_diff_scores is not None
            else ""
        )  # fmt: skip
    )


@import_app.command("megadetector")
def import_megadetector_command(
    checkpoint: Path = typer.Argument(
        ..., help="MegaDetector .pt (v5a/v5b, or an ultralytics MDv1000/MDv6)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="ONNX file to write (default: next to the .pt)."
    ),
    trust: bool = _TRUST,
    img_size: int | None = typer.Option(None, help="Input side (default: native, 1280 for MDv5)."),
    name: str | None = typer.Option(None, help="Model name for the result rows."),
    version: str | None = typer.Option(None, help="Model version for the result rows."),
    classes: str | None = typer.Option(None, help="Comma-separated category of each class column."),
    samples: int = _SAMPLES,
    tolerance: float = _TOLERANCE,
    dynamic: bool = typer.Option(
        False,
        "--dynamic",
        help="Dynamic height and width axes (YOLOv5 export.py --dynamic): needed by "
        "`profile: reference` / `letterbox: rectangle`; Triton repositories need a fixed size.",
    ),
) -> None:
    """Identify, load (only with --trust), export to ONNX, check parity, write the sidecar."""
    from trapline.models.importers.megadetector import ImportOptions, import_megadetector

    options = ImportOptions(
        trust=trust, img_size=img_size, name=name, version=version, samples=samples,
        tolerance=tolerance, classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
        dynamic=dynamic,
    )  # fmt: skip
    _run(import_megadetector, checkpoint, _out(checkpoint, out), options=options)


@import_app.command("deepfaune")
def import_deepfaune_command(
    checkpoint: Path = typer.Argument(..., help="DeepFaune .pt ({'args', 'state_dict'})."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="ONNX file to write (default: next to the .pt)."
    ),
    trust: bool = _TRUST,
    img_size: int | None = typer.Option(None, help="Input side (default 182, DeepFaune's)."),
    name: str | None = typer.Option(
        None, help="Model name for the result rows (default deepfaune)."
    ),
    version: str | None = typer.Option(None, help="Model version for the result rows, e.g. 1.3."),
    heads: int | None = typer.Option(None, help="Attention heads (default width / 64, as DINOv2)."),
    labels: Path | None = typer.Option(
        None, help="JSON list of labels in logit order (default: the release's, see --release)."
    ),
    release: str | None = typer.Option(
        None,
        help="DeepFaune release whose class list the head has, e.g. 1.3 (default: the one "
        "release with as many classes as the head).",
    ),
    samples: int = _SAMPLES,
    tolerance: float = _TOLERANCE,
) -> None:
    """Identify, load (only with --trust), export at 182 with pos_embed resampled, check, write sidecar."""
    from trapline.models.importers.deepfaune import import_deepfaune
    from trapline.models.importers.megadetector import ImportOptions

    options = ImportOptions(trust=trust, img_size=img_size, name=name, version=version,
                            samples=samples, tolerance=tolerance)  # fmt: skip
    names = tuple(json.loads(labels.read_text())) if labels else None
    _run(
        import_deepfaune,
        checkpoint,
        _out(checkpoint, out),
        options=options,
        heads=heads,
        labels=names,
        release=release,
    )


def identify_command(
    checkpoint: Path = typer.Argument(..., help="A .pt checkpoint."),
) -> None:
    """Say what a checkpoint is, without unpickling it."""
    try:
        from trapline.models.importers.identify import CheckpointError, identify
    except ImportError as error:
        typer.echo(f"error: needs the [import] extra ({error})", err=True)
        raise typer.Exit(2) from None
    try:
        info = identify(checkpoint)
    except CheckpointError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({
        "file": str(info.path), "kind": info.kind, "why": info.reason, "md5": info.md5,
        "known_release": info.known_name, "known_version": info.known_version,
        "megadetector_info": info.metadata or None,
        "modules": sorted(info.modules),
    }, indent=2))  # fmt: skip
    if info.kind == "unknown":
        raise typer.Exit(2)


def fetch_command(
    name: str | None = typer.Argument(
        None, help="Catalogue name: mdv5a, mdv1000-redwood, deepfaune-v1.4, ... (see --list)."
    ),
    sha256: str | None = typer.Option(
        None, "--sha256", help="Vouch for the file by its sha256 (where none is published)."
    ),
    keep_download: bool = typer.Option(False, help="Keep the publisher's file next to the ONNX."),
    list_: bool = typer.Option(False, "--list", help="List the catalogue and what is cached."),
) -> None:
    """Download a known release from its publisher, verify it, import it to ONNX, cache it.

    Prints the cached ONNX path. Exit codes: 2 unknown or unsupported release, or import
    failed; 3 no published checksum (rerun with --sha256); 5 checksum mismatch (file deleted);
    6 download failed (offline: the message says which file to put where).
    """
    from trapline.models.fetch import FetchError, cache_root, fetch

    if list_ or name is None:
        _list_catalogue(cache_root())
        return
    try:
        result = fetch(name, sha256=sha256, keep_download=keep_download)
    except FetchError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    if result.cache_hit:
        typer.echo(f"{result.release.name}: cached", err=True)
    typer.echo(str(result.onnx_path))


def _list_catalogue(cache: Path) -> None:
    from trapline.models.catalogue import ALIASES, RELEASES

    typer.echo(f"cache: {cache}")
    for rel in RELEASES.values():
        cached = (cache / rel.name / f"{rel.name}.onnx").exists()
        checksum = f"published {rel.verified_by}" if rel.verified_by else "no published checksum"
        status = "cached" if cached else "NOT IMPORTABLE" if rel.importer is None else ""
        typer.echo(f"{rel.name:18} {rel.kind:10} v{rel.version:17} {rel.input_size:5d} px "
                   f"{len(rel.classes):3d} classes  {checksum:22} {status}")  # fmt: skip
    typer.echo("aliases: " + ", ".join(f"{a} -> {t}" for a, t in ALIASES.items()))


models_app = typer.Typer(help="Model files and the Triton model repository.", no_args_is_help=True)
models_app.add_typer(import_app, name="import")
models_app.command("identify")(identify_command)
models_app.command("fetch")(fetch_command)


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
    from trapline.services.devstack.triton import TritonSetupError, triton_install

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
