"""A watcher that ends Ray's helper processes within seconds of the process that started them.

Why: after a kill -9 of `trapline serve`, Ray's raylet and workers go within ~3 s, but its
dashboard agent and runtime-env agent notice their raylet is gone and then try to report that
to the (dead) GCS with a 60 s timeout before exiting, so each kill left them running for over a
minute: memory, ports and log files held by nothing. In a pod that is restarted in place (or a
laptop that restarts serve) they pile up.

How: `start_reaper()` starts this module as a small separate process (its own session, so a
signal to the parent's group does not take it too) whose stdin is a pipe only the parent holds.
While the parent lives, the watcher notes the parent's descendants (pid and start time) every
half second; when the pipe closes, however the parent ended, it sends SIGTERM to those still
alive, SIGKILL after `GRACE_S`, and exits. Linux only (/proc); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5  # how often the parent's descendants are noted
GRACE_S = 2.0  # between SIGTERM and SIGKILL


def start_reaper() -> subprocess.Popen | None:
    """Watch this process: its descendants are ended once it is gone. None where no /proc."""
    if not Path("/proc/self/stat").exists():
        return None
    read_end, write_end = os.pipe()  # both non-inheritable: Ray's children never hold them
    watcher = subprocess.Popen(
        [sys.executable, "-m", "trapline.services.run.reaper", str(os.getpid())],
        stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    os.close(read_end)
    _HELD.append(write_end)  # open until this process ends: then the watcher reads EOF
    return watcher


_HELD: list[int] = []


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live, non-zombie process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(entry)] = (int(fields[1]), fields[19])  # ppid, starttime
    return found


def _descendants(root: int, processes: dict[int, tuple[int, str]]) -> dict[int, str]:
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in processes.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _alive(noted: dict[int, str]) -> list[int]:
    """The noted processes still running (same pid and start time: not a reused pid)."""
    now = _processes()
    return [pid for pid, started in noted.items() if pid in now and now[pid][1] == started]


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def watch(parent: int) -> None:
    """Note `parent`'s descendants until stdin closes, then end them."""
    noted: dict[int, str] = {}
    me = os.getpid()
    while True:
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # the parent is gone (its write end closed)
        noted.update(_descendants(parent, _processes()))
        noted.pop(me, None)
    noted.update(_descendants(parent, _processes()))  # children not yet reparented
    noted.pop(me, None)
    _signal(_alive(noted), signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while _alive(noted) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal(_alive(noted), signal.SIGKILL)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
