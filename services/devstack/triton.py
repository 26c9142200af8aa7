"""A real Triton Inference Server on this machine, for tests, benchmarks and the local stack.

`tritonserver` 2.51 ships inside the PyPI wheel `nvidia-pytriton==0.7.0` with only the python
backend; `scripts/setup_triton.sh` installs it in its own venv (`.venv-triton/`: pytriton needs
numpy<2 and its python-backend stub is built for CPython 3.11). Production runs the official
Triton image instead (docs/triton.md); the client code is the same.

    repo = build_repository(det, cls, tmp / "repo", backend="python",
                            python_site_packages=triton_install().site_packages)
    with start_triton(repo) as server:
        detector = TritonDetector(server.grpc_url, "trapline_detector")
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from trapline.services.devstack.tansu import ServerStartError, free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-triton"
VENV_ENV = "TRAPLINE_TRITON_VENV"
STUB_PYTHON = "3.11"  # the python-backend stub we copy is built for this CPython


_ERROR_LINE = re.compile(r"^E\d{4} |UNAVAILABLE:|^error:|Error|Traceback")
_HARMLESS = ("NVML", "DCGM", "CudaDriverHelper", "CUDA driver", "pinned")


class TritonSetupError(RuntimeError):
    """The Triton venv is missing or unusable; the message says how to fix it."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the pytriton wheel are, as found in one venv."""

    venv: Path
    python_version: str  # "3.11"
    site_packages: Path  # first on sys.path in the generated model.py
    python_libdir: Path  # holds the libpython3.11.so the stub must load
    server_root: Path  # .../site-packages/pytriton/tritonserver

    @property
    def tritonserver(self) -> Path:
        return self.server_root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return (
            self.server_root / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub"
        )

    @property
    def python_backend(self) -> Path:
        return self.server_root / "backends" / "python"

    def library_path(self) -> str:
        """LD_LIBRARY_PATH for tritonserver and its stub: the wheel's bundled libraries
        (libtritonserver, libcudart, ...) and the venv interpreter's own libpython; without the
        latter the stub loads whichever libpython3.11 the loader finds first."""
        libs = self.site_packages / "nvidia_pytriton.libs"
        parts = [str(libs), str(self.python_libdir), os.environ.get("LD_LIBRARY_PATH", "")]
        return ":".join(p for p in parts if p)


def default_venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)


def triton_install(venv: Path | None = None) -> TritonInstall:
    """Inspect the Triton venv; raise `TritonSetupError` naming the fix if it is not usable."""
    venv = Path(venv) if venv is not None else default_venv()
    python = venv / "bin" / "python"
    setup = f"run scripts/setup_triton.sh {venv}"
    if not python.exists():
        raise TritonSetupError(f"no Triton venv at {venv} ({python} missing): {setup}")
    probe = (
        "import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % sys.version_info[:2],"
        " 'purelib': sysconfig.get_paths()['purelib'], 'libdir': sysconfig.get_config_var('LIBDIR'),"
        " 'shared': bool(sysconfig.get_config_var('Py_ENABLE_SHARED'))}))"
    )
    try:
        found = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise TritonSetupError(f"cannot run the Triton venv's python {python}: {error}") from None
    info = json.loads(found.stdout)
    if info["version"] != STUB_PYTHON:
        raise TritonSetupError(
            f"the Triton venv {venv} runs Python {info['version']}, but the python-backend stub "
            f"in nvidia-pytriton 0.7.0 that we use is built for {STUB_PYTHON}: recreate it with "
            f"TRAPLINE_TRITON_PYTHON=python{STUB_PYTHON} scripts/setup_triton.sh {venv}"
        )
    if not info["shared"]:
        raise TritonSetupError(
            f"the Triton venv {venv} uses a Python without a shared libpython, which the stub "
            f"needs: recreate it from one built with --enable-shared (Debian's python3.11)"
        )
    install = TritonInstall(
        venv=venv,
        python_version=info["version"],
        site_packages=Path(info["purelib"]),
        python_libdir=Path(info["libdir"]),
        server_root=Path(info["purelib"]) / "pytriton" / "tritonserver",
    )
    for path in (
        install.tritonserver,
        install.stub,
        install.python_backend / "libtriton_python.so",
    ):
        if not path.exists():
            raise TritonSetupError(f"{path} is missing (nvidia-pytriton not installed?): {setup}")
    return install


@dataclass
class TritonServer:
    """A running tritonserver; a context manager that stops it on exit."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    model_repository: Path
    log_path: Path
    _work_dir: Path | None = field(default=None, repr=False)

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """The log's error lines (model load failures sit above a long settings table),
        then its last lines; the harmless CUDA/NVML complaints of a GPU-less host left out."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [
            line for line in text[:-lines]
            if _ERROR_LINE.search(line) and not any(h in line for h in _HARMLESS)
        ]  # fmt: skip
        return "\n".join([*errors[-20:], *(["..."] if errors else []), *text[-lines:]])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (it drains in-flight requests for up to 3 s) and remove its files."""
        stop_process(self.process, timeout_s)
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_triton(
    model_repository: Path,
    *,
    venv: Path | None = None,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    timeout_s: float = 90.0,
    attempts: int = 3,
    extra_args: tuple[str, ...] = (),
) -> TritonServer:
    """Start tritonserver on 127.0.0.1 with `model_repository`; return once it is ready.

    Ready means `/v2/health/ready`: every model in the repository loaded. Ports left as None are
    picked free (and re-picked if taken meanwhile). Raises `TritonSetupError` when the venv is
    unusable and `ServerStartError` with the server's log tail when it does not come up
    (a model that fails to load makes tritonserver exit, and its error is in that tail).
    """
    install = triton_install(venv)
    repository = Path(model_repository).resolve()
    if not repository.is_dir():
        raise ServerStartError(f"Triton model repository {repository} is not a directory")
    chosen = (http_port, grpc_port, metrics_port)
    tries = 1 if all(chosen) else max(attempts, 1)
    last: ServerStartError | None = None
    for _ in range(tries):
        ports = [p or free_port() for p in chosen]
        server = _launch(install, repository, ports, extra_args)
        try:
            _wait_ready(server, timeout_s)
        except ServerStartError as error:
            server.stop()
            last = error
            if "already in use" not in str(error):
                break  # a model or setup problem: another port will not help
            continue
        atexit.register(server.stop)  # a crashed test run must not leave servers behind
        return server
    assert last is not None
    raise last


def _launch(
    install: TritonInstall, repository: Path, ports: list[int], extra_args: tuple[str, ...]
) -> TritonServer:
    work = Path(tempfile.mkdtemp(prefix="trapline-triton-"))
    backends = work / "backends" / "python"
    backends.mkdir(parents=True)
    # The stub must sit in the backend directory; symlinks would resolve back into the wheel.
    for path in (
        install.python_backend / "libtriton_python.so",
        install.python_backend / "triton_python_backend_utils.py",
        install.stub,
    ):
        shutil.copy2(path, backends / path.name)
    http, grpc, metrics = ports
    command = [
        str(install.tritonserver),
        "--model-repository", str(repository),
        "--backend-directory", str(work / "backends"),
        "--http-address", "127.0.0.1", "--http-port", str(http),
        "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
        "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
        "--exit-timeout-secs", "3",
        *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": install.library_path()}
    log_path = work / "tritonserver.log"
    # Output goes to a file, not a pipe: nobody drains a pipe, and a full one would block it.
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    return TritonServer(process, http, grpc, metrics, repository, log_path, work)


def _wait_ready(server: TritonServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"{server.http_url}/v2/health/ready"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise _start_error(server, f"exited with status {server.process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200 and server.process.poll() is None:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening or not ready yet
        time.sleep(0.1)
    raise _start_error(server, f"not ready within {timeout_s:.0f} s")


def _start_error(server: TritonServer, what: str) -> ServerStartError:
    return ServerStartError(
        f"tritonserver (repository {server.model_repository}, http {server.http_port}, "
        f"grpc {server.grpc_port}) {what}; its log:\n{server.log_tail()}"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m trapline.services.devstack.triton REPO`: serve REPO in the foreground."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "repository", type=Path, help="model repository (trapline models build-repo)"
    )
    parser.add_argument(
        "--venv", type=Path, default=None, help=f"Triton venv (default {DEFAULT_VENV})"
    )
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args(argv)
    try:
        server = start_triton(
            args.repository,
            venv=args.venv,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
        )
    except (TritonSetupError, ServerStartError) as error:
        print(error)
        return 1
    print(f"Triton ready: {server.grpc_url} {server.http_url} {server.metrics_url} (Ctrl-C stops)")
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
