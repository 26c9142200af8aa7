"""CPU and memory of worker processes, sampled from /proc while a benchmark runs.

Linux only (these benchmarks run on Linux nodes); no psutil needed. Workers are found as
descendants of this process (Ray actors under our own raylet, or `trapline serve` subprocesses),
never by name across the machine, where other users' Ray workers may run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user+system) of `pid`, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except OSError:
        return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every process below `root` (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                parents.setdefault(stat[0], []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class ProcessSampler:
    """Samples CPU seconds and RSS of the processes `find()` names, every `interval_s`.

    `find` returns {label: pid}; it is called on every sample, so workers that start late
    (Ray actors) are picked up.
    """

    find: Callable[[], dict[str, int]]
    interval_s: float = 0.5
    samples: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ProcessSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="procstats")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def sample(self) -> None:
        now = time.monotonic()
        with open("/proc/stat") as handle:  # machine-wide idle + iowait, as cumulative "CPU"
            ticks = handle.readline().split()[1:]
        self.samples.setdefault("_idle", []).append(
            (now, (int(ticks[3]) + int(ticks[4])) / TICKS, 0)
        )
        for label, pid in self.find().items():
            stat = _stat(pid)
            if stat is not None:
                self.samples.setdefault(label, []).append((now, stat[1], _rss(pid)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def cpu_seconds(self, labels: list[str], t0: float, t1: float) -> float:
        """CPU seconds the processes `labels` used between monotonic times t0 and t1."""
        total = 0.0
        for label in labels:
            rows = self.samples.get(label, [])
            if len(rows) >= 2:
                times = [r[0] for r in rows]
                cpus = [r[1] for r in rows]
                total += float(np.interp(t1, times, cpus) - np.interp(t0, times, cpus))
        return total

    def rss_timeline(self, points: int = 40) -> dict[str, list[tuple[float, float]]]:
        """Per process: (seconds since its first sample, RSS MB) at about `points` evenly spaced
        samples: whether memory climbs with the work or steps once (growth.json keeps it)."""
        out = {}
        for label, rows in self.samples.items():
            if len(rows) < 2 or label.startswith("_"):
                continue
            step = max(1, len(rows) // points)
            picked = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
            out[label] = [(round(t - rows[0][0], 1), round(rss / 1e6, 1)) for t, _, rss in picked]
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """Per process: mean CPU (cores busy, 1.0 = one core) over its sampled life, RSS mean/peak/last."""
        out = {}
        for label, rows in self.samples.items():
            if len(rows) < 2 or label.startswith("_"):
                continue
            (t0, c0, _), (t1, c1, _) = rows[0], rows[-1]
            rss = [r for _, _, r in rows]
            out[label] = {
                "cpu_cores_mean": round((c1 - c0) / (t1 - t0), 3) if t1 > t0 else 0.0,
                "rss_mb_mean": round(sum(rss) / len(rss) / 1e6, 1),
                "rss_mb_peak": round(max(rss) / 1e6, 1),
                "rss_mb_final": round(rss[-1] / 1e6, 1),
                "seconds_sampled": round(t1 - t0, 1),
            }
        return out
