"""Helpers for the reliability scenarios: worker processes, table reading, accounting.

Tables are read only as whole folders (recursively, Hive partitions included), never by part
file names, so the scenarios hold whatever layout the sink writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import fsspec

from support.stream_workers import worker_env  # noqa: F401  (one definition, re-exported here)
from trapline.pipelines.readers import read_table

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Score:
    """One scenario's accounting: what went in, what the tables hold."""

    scenario: str
    sent: int  # inputs that must each end in exactly one media or failures row
    rows: int  # media + failures rows found for them
    duplicates: int  # rows beyond the first for one input
    losses: int  # inputs with no row at all
    note: str = ""
    test: str = ""


SCOREBOARD: list[Score] = []


def read_rows(out: str | Path, table: str) -> list[dict]:
    """Every row of `table` under `out` (a folder or URL), through the project's
    layout-independent reader: whole folders, bookkeeping files (`.`/`_`) skipped.
    Object-store listings are cached per process by fsspec: dropped first, so a poll sees
    what the worker wrote since."""
    fsspec.core.url_to_fs(str(out))[0].invalidate_cache()
    return read_table(str(out), table).to_pylist()


def account(
    scenario: str,
    expected_uris: Iterable[str],
    out: str | Path,
    note: str = "",
) -> Score:
    """Each expected URI must be in exactly one media or failures row; media_ids unique."""
    expected = {_plain(u) for u in expected_uris}
    media = read_rows(out, "media")
    failures = read_rows(out, "failures")
    counts = Counter(_plain(row["uri"]) for row in media + failures)
    media_ids = Counter(row["media_id"] for row in media)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    duplicates += sum(n - 1 for n in media_ids.values() if n > 1)
    losses = len(expected - set(counts))
    rows = sum(counts[u] for u in expected)
    return Score(scenario, len(expected), rows, duplicates, losses, note)


def _plain(uri: str) -> str:
    return uri.removeprefix("file://")


def start_worker(
    env: dict[str, str], out: str | Path, log: Path, preamble: str | None = None
) -> subprocess.Popen:
    """A real worker process. `preamble` is Python run before the CLI (to plant a fault in
    the process itself, e.g. a SIGKILL in the middle of a write). Its log goes to `log`."""
    serve = ["serve", "--workers", "0", "--out", str(out)]
    if preamble is None:
        command = [sys.executable, "-m", "trapline", *serve]
    else:
        code = f"{preamble}\nimport sys\nfrom trapline.services.cli.main import app\nsys.argv = ['trapline', *{serve!r}]\napp()"
        command = [sys.executable, "-c", code]
    with log.open("ab") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)


def stop_workers(workers: Iterable[subprocess.Popen], timeout_s: float = 60) -> None:
    """SIGTERM (drain), then wait; SIGKILL only a worker that does not drain in time."""
    workers = list(workers)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    workers: Iterable[subprocess.Popen] = (),
    log: Path | None = None,
    interval_s: float = 0.5,
) -> None:
    """Poll `condition`; fail with the worker log tail on timeout or if a worker died."""
    workers = list(workers)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        for worker in workers:
            if worker.poll() is not None:
                raise AssertionError(
                    f"worker exited {worker.returncode} while waiting for {what}:\n{tail(log)}"
                )
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{tail(log)}")


def tail(log: Path | None, lines: int = 25) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def accounted(out: str | Path) -> int:
    """media + failures rows so far."""
    return len(read_rows(out, "media")) + len(read_rows(out, "failures"))


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def held_records(metrics_port: int) -> int:
    """A worker's `trapline_held_records` (read from the broker, not yet written), from its
    /metrics: the bound that keeps a backlog in the broker (StreamWorker._hold_back)."""
    from load_tests.stream import scrape_metrics  # the benches' scraper; heavy to import

    values = scrape_metrics(metrics_port)
    assert "trapline_held_records" in values, "trapline_held_records not exported"
    return int(values["trapline_held_records"])


class Supervisor:
    """Restarts a worker process that exits, as Kubernetes would, and counts the restarts:
    a scenario can then show both that nothing is lost across a restart and whether the
    worker needed one."""

    def __init__(self, start: Callable[[], subprocess.Popen]):
        self.start = start
        self.worker = start()
        self.restarts = 0
        self.exit_codes: list[int] = []

    def check(self) -> None:
        if self.worker.poll() is not None:
            self.exit_codes.append(self.worker.returncode)
            self.restarts += 1
            self.worker = self.start()

    def wait_until(
        self, condition: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            self.check()
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{tail(log)}")

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check()
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))

    def stop(self) -> None:
        stop_workers([self.worker])
