"""`trapline models fetch NAME` and `--detector/--classifier NAME`, against a real HTTP server.

The server is the standard library's, started by the tests on loopback: it answers Range
requests with 206 and can cut a response off part-way (the connection is shut down after half
the body) to exercise resume. Catalogue entries point at it and carry the checksums of tiny
checkpoints of the real architectures (built by `tests/unit/test_model_import.py`'s fixtures, imported
here), so the import step is the real one. Every request the server sees is logged, which is how
"no network on a cache hit" is checked.

The DeepFaune importer's class-list choice (by release, or by head size when only one release has
that many classes) is tested here too, on 34- and 38-class heads.
"""

# ruff: noqa: F811  (pytest fixtures imported from test_model_import are named as parameters)

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

torch = pytest.importorskip(
    "torch", reason="needs the [import] extra (torch): pip install -e '.[import]'"
)

from test_model_import import SIDE, deepfaune_checkpoint, md_checkpoint  # noqa: E402, F401

from trapline.models import catalogue  # noqa: E402
from trapline.models.catalogue import DEEPFAUNE_V1_3, Release  # noqa: E402
from trapline.models.download import digests  # noqa: E402
from trapline.models.fetch import (  # noqa: E402
    ChecksumMismatch,
    ChecksumUnknown,
    FetchError,
    NetworkError,
    cache_root,
    fetch,
    resolve_model,
)
from trapline.models.importers.deepfaune import import_deepfaune  # noqa: E402
from trapline.models.importers.identify import CheckpointError  # noqa: E402
from trapline.models.importers.megadetector import ImportOptions  # noqa: E402
from trapline.models.labels import DEEPFAUNE_LABELS  # noqa: E402
from trapline.models.onnx_backend import OnnxClassifier, OnnxDetector  # noqa: E402
from trapline.models.triton_backend import make_backends  # noqa: E402
from trapline.services.cli.models import fetch_command  # noqa: E402

# --------------------------------------------------------------------------------------------
# A file server with Range support and a switch that cuts responses short


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        wanted = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if wanted:
            start = int(wanted.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if srv.cuts > 0:  # promise the whole body, send half, drop the connection
            srv.cuts -= 1
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None]] = []  # (path, Range header) of every request
        self.cuts = 0  # how many of the next responses are cut off half-way
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: Path) -> str:
        self.files[f"/{path.name}"] = path.read_bytes()
        return f"http://127.0.0.1:{self.server_port}/{path.name}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TRAPLINE_MODEL_CACHE", str(root))
    monkeypatch.delenv("TRAPLINE_MODEL_MIRROR", raising=False)
    return root


@pytest.fixture(scope="module")
def deepfaune34(deepfaune_checkpoint, tmp_path_factory) -> Path:
    """DeepFaune v1.3's shape: the 38-class test checkpoint with a 34-row head."""
    ckpt = torch.load(deepfaune_checkpoint, weights_only=True)
    for key in ("base_model.head.weight", "base_model.head.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key][:34].clone()
    ckpt["args"]["num_classes"] = 34
    path = tmp_path_factory.mktemp("df34") / "deepfaune34_tiny.pt"
    torch.save(ckpt, path)
    return path


def _release(monkeypatch, name: str, kind: str, url: str, path: Path, **fields) -> Release:
    """A catalogue entry for a tiny file on the test server (published md5 unless overridden)."""
    template = catalogue.RELEASES["mdv5a" if kind == "detector" else "deepfaune-v1.4"]
    fields.setdefault("md5", digests(path).md5)
    rel = dataclasses.replace(template, name=name, url=url, file=path.name, **fields)
    monkeypatch.setitem(catalogue.RELEASES, name, rel)
    return rel


def _closed_port_url(name: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


# --------------------------------------------------------------------------------------------
# Download, verify, import, cache


def test_fetch_shows_progress_verifies_imports_and_caches(server, md_checkpoint, monkeypatch,
                                                          cache):  # fmt: skip
    url = server.serve(md_checkpoint)
    _release(monkeypatch, "tiny-md", "detector", url, md_checkpoint, input_size=SIDE)
    out = io.StringIO()
    result = fetch("tiny-md", console=Console(file=out, width=120))

    assert not result.cache_hit and result.onnx_path == cache / "tiny-md" / "tiny-md.onnx"
    shown = out.getvalue()
    size_kb = f"{md_checkpoint.stat().st_size / 1000:.1f}"
    assert "tiny-md" in shown and f"{size_kb}/{size_kb} kB" in shown, shown  # the progress bar
    assert "cached tiny-md at" in shown
    sidecar = json.loads(result.onnx_path.with_suffix(".json").read_text())
    assert sidecar["fetched"]["sha256"] == digests(md_checkpoint).sha256
    assert sidecar["fetched"]["verified_by"] == "published md5"
    assert sidecar["input_size"] == SIDE and sidecar["version"] == "5a.0.1"
    assert OnnxDetector(result.onnx_path).spec.input_size == SIDE
    kept = sorted(p.name for p in result.onnx_path.parent.iterdir())
    assert kept == [".lock", "tiny-md.json", "tiny-md.onnx"]  # the .pt and scratch are gone
    assert server.log == [("/" + md_checkpoint.name, None)]


def test_second_fetch_is_a_cache_hit_without_network(server, md_checkpoint, monkeypatch):
    url = server.serve(md_checkpoint)
    _release(monkeypatch, "tiny-md", "detector", url, md_checkpoint, input_size=SIDE)
    first = fetch("tiny-md", console=_quiet())
    requests = len(server.log)
    server.close()  # any request now fails

    second = fetch("tiny-md", console=_quiet())
    assert second.cache_hit and second.onnx_path == first.onnx_path
    assert second.sha256 == first.sha256
    assert len(server.log) == requests == 1


def test_checksum_mismatch_is_refused_and_the_file_deleted(server, md_checkpoint, monkeypatch,
                                                          cache):  # fmt: skip
    url = server.serve(md_checkpoint)
    _release(monkeypatch, "tiny-md", "detector", url, md_checkpoint, md5="0" * 32)
    with pytest.raises(ChecksumMismatch, match="not the 0{32} published") as error:
        fetch("tiny-md", console=_quiet())
    assert error.value.exit_code == 5 and "deleted" in str(error.value)
    assert [p.name for p in (cache / "tiny-md").iterdir()] == [".lock"]  # no .pt, .part, .onnx


def test_an_interrupted_download_resumes_with_a_range_request(server, md_checkpoint,
                                                              monkeypatch):  # fmt: skip
    url = server.serve(md_checkpoint)
    _release(monkeypatch, "tiny-md", "detector", url, md_checkpoint, input_size=SIDE)
    server.cuts = 1
    result = fetch("tiny-md", console=_quiet(), retries=1)

    half = md_checkpoint.stat().st_size // 2
    assert server.log == [("/" + md_checkpoint.name, None),
                          ("/" + md_checkpoint.name, f"bytes={half}-")]  # fmt: skip
    assert result.sha256 == digests(md_checkpoint).sha256  # the spliced file is the right one


def test_a_download_cut_off_again_keeps_its_part_for_the_next_call(server, md_checkpoint,
                                                                    monkeypatch, cache):  # fmt: skip
    url = server.serve(md_checkpoint)
    _release(monkeypatch, "tiny-md", "detector", url, md_checkpoint, input_size=SIDE)
    server.cuts = 1
    with pytest.raises(NetworkError, match="rerun to resume") as error:
        fetch("tiny-md", console=_quiet(), retries=0)
    assert error.value.exit_code == 6
    part = cache / "tiny-md" / (md_checkpoint.name + ".part")
    half = md_checkpoint.stat().st_size // 2
    assert part.stat().st_size == half

    fetch("tiny-md", console=_quiet(), retries=0)
    assert server.log[-1] == ("/" + md_checkpoint.name, f"bytes={half}-")
    assert not part.exists()


def test_offline_says_which_file_to_download_from_where_and_where_to_put_it(
    md_checkpoint, monkeypatch, cache
):  # fmt: skip
    url = _closed_port_url(md_checkpoint.name)
    _release(monkeypatch, "tiny-md", "detector", url, md_checkpoint, input_size=SIDE)
    with pytest.raises(NetworkError) as error:
        fetch("tiny-md", console=_quiet(), retries=0)
    message = str(error.value)
    target = cache / "tiny-md" / md_checkpoint.name
    assert "\n" not in message and "connection refused" in message
    assert f"download {url} and put it at {target}" in message
    assert "trapline models fetch tiny-md" in message

    # Doing what it says works, still offline.
    target.write_bytes(md_checkpoint.read_bytes())
    assert fetch("tiny-md", console=_quiet()).onnx_path.exists()


def test_a_mirror_replaces_the_publishers_host(server, md_checkpoint, monkeypatch):
    server.serve(md_checkpoint)
    url = _closed_port_url(md_checkpoint.name)
    _release(monkeypatch, "tiny-md", "detector", url, md_checkpoint, input_size=SIDE)
    monkeypatch.setenv("TRAPLINE_MODEL_MIRROR", f"http://127.0.0.1:{server.server_port}/")
    assert not fetch("tiny-md", console=_quiet()).cache_hit
    assert server.log == [("/" + md_checkpoint.name, None)]


def test_no_published_checksum_prints_the_sha256_and_imports_only_when_given_back(
    server, deepfaune34, monkeypatch, cache
):  # fmt: skip
    url = server.serve(deepfaune34)
    _release(monkeypatch, "tiny-df13", "classifier", url, deepfaune34, md5=None, version="1.3")
    sha = digests(deepfaune34).sha256
    with pytest.raises(ChecksumUnknown, match=f"--sha256 {sha}") as error:
        fetch("tiny-df13", console=_quiet())
    assert error.value.exit_code == 3
    assert (cache / "tiny-df13" / deepfaune34.name).exists()  # kept: no second download

    with pytest.raises(ChecksumMismatch):  # a wrong pin deletes the file
        fetch("tiny-df13", sha256="f" * 64, console=_quiet())
    result = fetch("tiny-df13", sha256=sha.upper(), console=_quiet())
    sidecar = json.loads(result.onnx_path.with_suffix(".json").read_text())
    assert sidecar["labels"] == list(DEEPFAUNE_V1_3) and sidecar["version"] == "1.3"
    assert sidecar["fetched"]["verified_by"] == "--sha256"
    crops = np.random.default_rng(0).integers(0, 256, (2, 182, 182, 3), dtype=np.uint8)
    assert OnnxClassifier(result.onnx_path).classify(crops).shape == (2, 34)
    assert fetch("tiny-df13", console=_quiet()).cache_hit  # vouched for once is enough
    assert len(server.log) == 2  # the first download, and the one after the wrong pin


def test_unknown_and_unsupported_names_are_refused_before_any_download():
    with pytest.raises(FetchError, match="no model called 'mdv7'.*known: .*mdv5a"):
        fetch("mdv7")
    with pytest.raises(FetchError, match="DINOv3 ViT-L/16.*Use deepfaune-v1.4"):
        fetch("deepfaune-v1.5")


def test_cache_folder_follows_trapline_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAPLINE_MODEL_CACHE", str(tmp_path / "t"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "t"
    monkeypatch.delenv("TRAPLINE_MODEL_CACHE")
    assert cache_root() == tmp_path / "x" / "trapline" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_root() == tmp_path / "h" / ".cache" / "trapline" / "models"


# --------------------------------------------------------------------------------------------
# Names where paths go: --detector NAME / --classifier NAME


def test_model_names_resolve_to_fetched_onnx_files_in_make_backends(
    server, md_checkpoint, deepfaune_checkpoint, monkeypatch, tmp_path
):  # fmt: skip
    _release(monkeypatch, "tiny-md", "detector", server.serve(md_checkpoint), md_checkpoint,
             input_size=SIDE)  # fmt: skip
    _release(monkeypatch, "tiny-df", "classifier", server.serve(deepfaune_checkpoint),
             deepfaune_checkpoint, sha256=digests(deepfaune_checkpoint).sha256, md5=None)  # fmt: skip
    monkeypatch.chdir(tmp_path)  # names are looked up as files first
    local = tmp_path / "detector.onnx"
    assert resolve_model(local, "detector") == local  # not a name: as given, even if missing
    with pytest.raises(FetchError, match="tiny-md is a detector, not a classifier"):
        resolve_model("tiny-md", "classifier")

    detector, classifier = make_backends("onnx", detector_model=Path("tiny-md"),
                                         classifier_model=Path("tiny-df"))  # fmt: skip
    assert detector.spec.input_size == SIDE
    assert classifier.spec.labels == DEEPFAUNE_LABELS and classifier.spec.version == "1.4"
    assert len(server.log) == 2
    make_backends("onnx", detector_model=Path("tiny-md"), classifier_model=Path("tiny-df"))
    assert len(server.log) == 2  # cached


def test_fetch_command_prints_the_onnx_path_and_exits_with_the_errors_code(
    server, md_checkpoint, monkeypatch
):  # fmt: skip
    app = typer.Typer()
    app.command("fetch")(fetch_command)
    app.command("other")(lambda: None)  # a group, as under `trapline models`
    runner = CliRunner()
    _release(monkeypatch, "tiny-md", "detector", server.serve(md_checkpoint), md_checkpoint,
             input_size=SIDE)  # fmt: skip
    ok = runner.invoke(app, ["fetch", "tiny-md"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip().splitlines()[-1].endswith("tiny-md/tiny-md.onnx")

    listing = runner.invoke(app, ["fetch", "--list"])
    assert re.search(r"tiny-md .* cached", listing.output) and "deepfaune-v1.3" in listing.output

    _release(monkeypatch, "bad-md", "detector", server.serve(md_checkpoint), md_checkpoint,
             md5="1" * 32)  # fmt: skip
    bad = runner.invoke(app, ["fetch", "bad-md"])
    assert bad.exit_code == 5 and "error: bad-md:" in bad.output


# --------------------------------------------------------------------------------------------
# DeepFaune releases: the class list by release, or by head size


def test_deepfaune_import_takes_the_class_list_of_the_release_its_head_fits(
    deepfaune_checkpoint, deepfaune34, tmp_path
):  # fmt: skip
    options = ImportOptions(trust=True, samples=1)
    r38 = import_deepfaune(deepfaune_checkpoint, tmp_path / "d38.onnx", options)
    assert r38.sidecar["labels"] == list(DEEPFAUNE_LABELS) and r38.sidecar["version"] == "1.4"
    assert r38.sidecar["labels_from"] == "head size 38 = DeepFaune v1.4"
    r34 = import_deepfaune(deepfaune34, tmp_path / "d34.onnx", options)
    assert r34.sidecar["labels"] == list(DEEPFAUNE_V1_3) and r34.sidecar["version"] == "1.3"
    assert r34.sidecar["release"] == "deepfaune-v1.3"
    assert OnnxClassifier(tmp_path / "d34.onnx").spec.labels == DEEPFAUNE_V1_3


def test_deepfaune_import_refuses_a_head_that_does_not_fit_the_named_release(
    deepfaune34, tmp_path
):  # fmt: skip
    options = ImportOptions(trust=True, samples=1)
    with pytest.raises(CheckpointError, match="34 outputs but DeepFaune v1.4 has 38 classes"):
        import_deepfaune(deepfaune34, tmp_path / "x.onnx", options, release="1.4")
    with pytest.raises(CheckpointError, match="no DeepFaune release '2.0'"):
        import_deepfaune(deepfaune34, tmp_path / "x.onnx", options, release="2.0")
    labels = tuple(f"class {i}" for i in range(34))
    result = import_deepfaune(deepfaune34, tmp_path / "own.onnx", options, labels=labels)
    assert result.sidecar["labels"] == list(labels) and result.sidecar["labels_from"] == "--labels"


def test_deepfaune_import_refuses_a_head_no_release_has(deepfaune_checkpoint, tmp_path):
    ckpt = torch.load(deepfaune_checkpoint, weights_only=True)
    for key in ("base_model.head.weight", "base_model.head.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key][:36].clone()
    path = tmp_path / "df36.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"36 outputs, which fits no known release \(v1.1: "
                       r"26, v1.2: 30, v1.3: 34, v1.4: 38 classes\); pass --release VERSION, or "
                       r"--labels"):  # fmt: skip
        import_deepfaune(path, tmp_path / "x.onnx", ImportOptions(trust=True))


def test_deepfaune_v1_5_is_refused_by_name(deepfaune_checkpoint, tmp_path):
    ckpt = torch.load(deepfaune_checkpoint, weights_only=True)
    ckpt["args"]["backbone"] = "vit_large_patch16_dinov3.lvd1689m"
    path = tmp_path / "df15.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="DeepFaune v1.5 is a DINOv3"):
        import_deepfaune(path, tmp_path / "x.onnx", ImportOptions(trust=True))
