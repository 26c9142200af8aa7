"""`trapline models fetch NAME` and `--detector NAME`: a catalogue name to a cached ONNX model.

What peers do (MegaDetector, SpeciesNet, PyTorch-Wildlife, AddaxAI fetch by name on first use),
with the checks a pickle needs: the publisher's file (`models/catalogue.py`) is downloaded from
its official location (`models/download.py`: progress bar, resume), its checksum compared with
the published one (a mismatch is deleted and refused), then imported to ONNX by the project's
importers and kept in the cache. The next call finds the ONNX file and touches no network.

Trust. Importing unpickles the file, which `trapline models import` does only with `--trust`.
Here the file is trusted when its checksum equals the one its publisher published: the bytes are
then the publisher's, which is what `--trust` vouches for. A release whose publisher publishes
no checksum (DeepFaune) is downloaded, its sha256 printed, and imported only when the user
passes that sha256 back with `--sha256` (having checked it elsewhere); the cache remembers it.
The importer's allow-list loader applies either way.

Cache: `$TRAPLINE_MODEL_CACHE`, else `$XDG_CACHE_HOME/trapline/models`, else
`~/.cache/trapline/models`; one folder per release holding `<name>.onnx` + `<name>.json` (and the
publisher's file while it is not imported, or with `keep_download`). `TRAPLINE_MODEL_MIRROR`
(a base URL) replaces the publisher's host for sites that mirror the files; checksums are the
catalogue's all the same. A file put in the release's folder by hand is used without download.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console

from trapline.models.catalogue import Release, is_release_name, release
from trapline.models.contracts import ModelContractError
from trapline.models.download import Digests, DownloadError, Offline, digests, download


class FetchError(ModelContractError):
    """A model could not be fetched; the message names the model and the fix.

    A ModelContractError, so that commands which report a bad model file report this too."""

    exit_code = 2


class ChecksumUnknown(FetchError):
    """The publisher publishes no checksum and the user has not vouched for the file."""

    exit_code = 3


class ChecksumMismatch(FetchError):
    """The file is not the one its checksum names (it has been deleted)."""

    exit_code = 5


class NetworkError(FetchError):
    """The file could not be downloaded (offline, HTTP error, connection kept dropping)."""

    exit_code = 6


@dataclass(frozen=True)
class Fetched:
    release: Release
    onnx_path: Path  # with its .json sidecar next to it
    cache_hit: bool  # True: nothing was downloaded or imported
    sha256: str  # of the publisher's file the ONNX was made from


def cache_root() -> Path:
    """Where fetched models live (see the module docstring for the order of precedence)."""
    if os.environ.get("TRAPLINE_MODEL_CACHE"):
        return Path(os.environ["TRAPLINE_MODEL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "trapline" / "models"


def source_url(rel: Release) -> str:
    mirror = os.environ.get("TRAPLINE_MODEL_MIRROR")
    return f"{mirror.rstrip('/')}/{rel.file}" if mirror else rel.url


def fetch(
    name: str,
    *,
    sha256: str | None = None,
    cache: Path | None = None,
    console: Console | None = None,
    retries: int = 3,
    keep_download: bool = False,
) -> Fetched:
    """The cached ONNX model for catalogue entry `name`, downloading and importing it if needed.

    `sha256` vouches for a release whose publisher publishes no checksum (and must agree with
    the catalogue's where there is one).
    """
    try:
        rel = release(name)
    except KeyError as error:
        raise FetchError(str(error)) from None
    if rel.importer is None:
        raise FetchError(f"{rel.name}: {rel.unsupported}")
    pinned = sha256.lower() if sha256 else None
    if pinned and rel.sha256 and pinned != rel.sha256:
        raise FetchError(f"{rel.name}: --sha256 {pinned} differs from the published {rel.sha256}")
    folder = (cache or cache_root()) / rel.name
    folder.mkdir(parents=True, exist_ok=True)
    onnx = folder / f"{rel.name}.onnx"
    with _locked(folder / ".lock"):  # several workers may resolve the same name at once
        known = _cached_sha256(rel, onnx, pinned)
        if known:
            return Fetched(rel, onnx, True, known)
        checkpoint = folder / rel.file
        if not checkpoint.exists():
            _download(rel, checkpoint, console, retries)
        sums = digests(checkpoint)
        _verify(rel, checkpoint, sums, pinned)
        _import(rel, checkpoint, onnx, sums, console or Console(stderr=True))
        if not keep_download:
            checkpoint.unlink()
        return Fetched(rel, onnx, False, sums.sha256)


def resolve_model(model: Path | str, kind: Literal["detector", "classifier"]) -> Path:
    """A model path as given, or, for a catalogue name, its cached ONNX file (fetched if new).

    An existing file always wins, so a local file that happens to share a release's name is
    used as it is. Anything else is returned unchanged for the contract loader to reject.
    """
    path = Path(model)
    text = str(model)
    if path.exists() or not is_release_name(text):
        return path
    rel = release(text)
    if rel.kind != kind:
        raise FetchError(f"{text} is a {rel.kind}, not a {kind}: pass it as --{rel.kind} {text}")
    return fetch(text).onnx_path


# --------------------------------------------------------------------------------------------


def _download(rel: Release, checkpoint: Path, console: Console | None, retries: int) -> None:
    url = source_url(rel)
    try:
        download(url, checkpoint, label=rel.name, console=console, retries=retries)
    except Offline as error:
        raise NetworkError(
            f"cannot download {rel.name}: {url} is unreachable ({error}). On a machine with "
            f"internet, download {url} and put it at {checkpoint}, then rerun `trapline models "
            f"fetch {rel.name}` (or set TRAPLINE_MODEL_MIRROR to a server that has {rel.file})"
        ) from None
    except DownloadError as error:
        raise NetworkError(f"cannot download {rel.name}: {error}") from None


def _verify(rel: Release, checkpoint: Path, sums: Digests, pinned: str | None) -> None:
    expected = [("sha256", rel.sha256, sums.sha256), ("md5", rel.md5, sums.md5),
                ("sha256", pinned, sums.sha256)]  # fmt: skip
    for algo, want, got in expected:
        if want and want != got:
            checkpoint.unlink()
            source = (
                "given with --sha256" if want == pinned else f"published ({rel.checksum_source})"
            )
            raise ChecksumMismatch(
                f"{rel.name}: {checkpoint.name} has {algo} {got}, not the {want} {source}; the "
                f"file was deleted. Rerun to download it again; if it keeps differing, the "
                f"server holds another file than the one the catalogue names ({source_url(rel)})"
            )
    if not (rel.sha256 or rel.md5 or pinned):
        raise ChecksumUnknown(
            f"{rel.name}: {rel.checksum_source}, so {checkpoint} cannot be checked against its "
            f"publisher's word. Its sha256 is {sums.sha256} ({sums.size:,} bytes). If that "
            f"matches a source you trust, import it with: trapline models fetch {rel.name} "
            f"--sha256 {sums.sha256}"
        )


def _import(rel: Release, checkpoint: Path, onnx: Path, sums: Digests, console: Console) -> None:
    """Import into a scratch folder, then move the ONNX and (last) its sidecar into place."""
    try:
        from trapline.models.importers.deepfaune import import_deepfaune
        from trapline.models.importers.identify import CheckpointError
        from trapline.models.importers.megadetector import ImportOptions, import_megadetector
    except ImportError as error:  # torch / onnx missing: keep the verified download
        raise FetchError(
            f"{rel.name}: {checkpoint} is downloaded and verified, but importing it to ONNX "
            f"needs the [import] extra ({error}): pip install 'trapline[import]', then rerun "
            f"trapline models fetch {rel.name}"
        ) from None
    scratch = onnx.parent / ".import"
    scratch.mkdir(exist_ok=True)
    out = scratch / onnx.name
    options = ImportOptions(trust=True, img_size=rel.input_size, version=rel.version)
    console.print(f"importing {checkpoint.name} to ONNX ({rel.importer} importer) ...")
    try:
        if rel.importer == "deepfaune":
            import_deepfaune(checkpoint, out, options, release=rel.version)
        else:
            import_megadetector(checkpoint, out, options)
        sidecar_path = out.with_suffix(".json")
        sidecar = json.loads(sidecar_path.read_text())
        sidecar["fetched"] = {
            "catalogue_name": rel.name, "url": source_url(rel), "sha256": sums.sha256,
            "md5": sums.md5, "size": sums.size, "licence": rel.licence,
            "verified_by": f"published {rel.verified_by}" if rel.verified_by else "--sha256",
        }  # fmt: skip
        sidecar_path.write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
        os.replace(out, onnx)
        os.replace(sidecar_path, onnx.with_suffix(".json"))
    except CheckpointError as error:
        raise FetchError(f"{rel.name}: the import failed: {error}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    console.print(f"cached {rel.name} at {onnx}")


def _cached_sha256(rel: Release, onnx: Path, pinned: str | None) -> str | None:
    """The sha256 the cached import was made from, if it is there and still what is wanted."""
    sidecar = onnx.with_suffix(".json")
    if not (onnx.exists() and sidecar.exists()):
        return None
    try:
        fetched = json.loads(sidecar.read_text()).get("fetched", {})
    except ValueError:
        return None
    got = fetched.get("sha256")
    wanted = [(rel.sha256, got), (rel.md5, fetched.get("md5")), (pinned, got)]
    if not got or any(want and want != have for want, have in wanted):
        return None  # a newer catalogue entry, or another pinned file: import again
    return got


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process at a time is assumed
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
