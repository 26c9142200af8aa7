"""The processes of a chaos trial (load_tests/chaos.py) besides the broker: the `trapline serve`
workers, restarted at once when they die as Kubernetes would, and `trapline compact` in a loop."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LEASE_HELD_EXIT = 3  # `trapline compact`: another compactor holds the lease (services/cli/tools.py)


class Pod:
    """One `trapline serve` process, started again at once whenever it dies."""

    def __init__(self, index: int, env: dict[str, str], out: str, log: Path):
        self.index, self.env, self.out, self.log = index, env, out, log
        self.kills, self.crashes = 0, []  # exit codes of the deaths we did not cause
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        self.started = time.monotonic()
        command = [sys.executable, "-m", "trapline", "serve", "--workers", "0", "--out", self.out]
        with self.log.open("ab") as handle:
            handle.write(f"=== chaos: worker {self.index} starts at {time.time():.3f}\n".encode())
            handle.flush()
            return subprocess.Popen(command, env=self.env, stdout=handle, stderr=subprocess.STDOUT)

    def check(self) -> None:
        if self.process.poll() is not None:
            self.crashes.append(self.process.returncode)
            self.process = self._start()

    def kill(self) -> None:
        with self.log.open("ab") as handle:
            handle.write(
                f"=== chaos: kill -9 of worker {self.index} at {time.time():.3f}\n".encode()
            )
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1
        self.process = self._start()

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class CompactLoop:
    """`trapline compact OUT` back to back, a short pause between, until `stop`."""

    out: str
    env: dict[str, str]
    pause_s: float
    log: Path
    runs: int = 0
    skipped: int = 0  # another compactor held the lease
    repaired: int = 0  # an OPTIMIZE overlapped another's and was repaired
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        """Stop after the run in progress, and wait for it."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(600)

    def run(self) -> None:
        command = [sys.executable, "-m", "trapline", "compact", self.out]
        while not self.stop.is_set():
            done = subprocess.run(command, env=self.env, capture_output=True, timeout=600)
            said = (done.stdout + done.stderr).decode(errors="replace")
            with self.log.open("a") as handle:
                handle.write(f"=== {time.time():.3f} exit {done.returncode}\n{said}")
            if done.returncode == 0:
                self.runs += 1
                self.repaired += "repaired:" in said
            elif done.returncode == LEASE_HELD_EXIT and "refused:" in said:
                self.skipped += 1
            else:
                self.errors.append(f"exit {done.returncode}: {said.strip()[-400:]}")
            self.stop.wait(self.pause_s)
