"""Restart recovery: how long a killed and restarted worker's partitions wait for their next row.

    .venv/bin/python -m load_tests --mode restart            # dynamic, static, ordinal

Each trial starts a fresh Tansu broker, a topic of `partitions` partitions and `workers` real
`trapline serve --workers 0` processes in one consumer group, and sends upload messages at `rate`
per second, spread evenly over the partitions, for the whole trial. Once every partition has
rows and the group has been stable for `settle_s`, worker `victim` is killed with SIGKILL (no
drain, no LeaveGroup: a crash or an OOM kill) and started again at once with the same settings,
hence, with static membership, the same group instance id.

Measured, per partition the victim owned (the last assignment in its log): the time from the
restart (the new process started) to the moment a new row of that partition is readable in the
media table (polled every 0.25 s). `first` is the first of its partitions to get a row, `all`
the last one: the time until the whole of its share flows again. Also: which worker took the
partitions (the restarted one, or a survivor after a rebalance), and at the end, after a drain,
that every photo is in exactly one row.

Dynamic membership: the old member stays in the group until its session timeout expires, the
new process joins as a new member, and the partitions move once or twice. Static membership
(`group_instance_id`): the new process takes the old one's place and assignment (KIP-345).
On Tansu both include the broker's own holds (docs/operations.md, "Static membership"); a real
Kafka answers a static member's rejoin at once. Ordinal (`partition_assignment=ordinal`): no
group protocol; worker i of the trial owns the partitions p with p % workers == i and the restarted
process assigns them to itself at start.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from load_tests.procstats import descendants
from load_tests.stream import worker_env
from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import Upload, encode_upload, split_source
from trapline.services.adapters import kafka_io
from trapline.services.devstack.tansu import TansuServer, start_tansu, stop_process

RESUME = re.compile(r"partition (?P<topic>\S+)/(?P<partition>\d+) resumes at offset")


@dataclass
class RestartOptions:
    trials: int = 2  # per membership mode
    modes: tuple[str, ...] = ("dynamic", "static", "ordinal")
    workers: int = 2
    partitions: int = 4
    rate: float = 4.0  # events/s over all partitions, for the whole trial
    session_timeout_ms: int = 20_000
    commit_interval_s: float = 1.0
    serve_workers: int = (
        0  # `trapline serve --workers`: 0 in-process, >= 1 Ray actors (+ Ray's start)
    )
    victim: int = 0  # the worker killed: 0 is started first (Tansu makes the first joiner leader)
    settle_s: float = 6.0  # no assignment change for this long before the kill
    timeout_s: float = 180.0  # per phase
    logs: Path | None = None  # keep the workers' logs here (one folder per trial)


@dataclass
class _Worker:
    index: int
    log: Path
    process: subprocess.Popen
    started: float  # time.time() at start


@dataclass
class _Producer:
    """Paced events, each a new small photo in `folder` (unique media ids: no duplicates)."""

    broker: TansuServer
    topic: str
    folder: Path
    partitions: int
    rate: float
    sent: list[str] = field(default_factory=list)  # uris
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        producer = kafka_io.make_producer(self.broker.bootstrap, client_id="trapline-bench")
        rng = np.random.default_rng(0)
        started = time.monotonic()
        number = 0
        try:
            while not self.stop.is_set():
                time.sleep(max(0.0, started + number / self.rate - time.monotonic()))
                partition = number % self.partitions
                path = self.folder / f"dep-{partition}" / f"IMG_{number:06d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                pixels = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buffer, "JPEG", quality=70)
                path.write_bytes(buffer.getvalue())
                event = Upload(
                    uri=f"file://{path}",
                    deployment_id=f"dep-{partition}",
                    uploaded_at=datetime.now(timezone.utc),
                )
                future = producer.send(
                    self.topic,
                    key=event.deployment_id.encode(),
                    value=encode_upload(event),
                    partition=partition,
                )
                future.add_errback(
                    lambda error, uri=event.uri: self.failed.append(f"{uri}: {error}")
                )
                self.sent.append(event.uri)
                number += 1
            producer.flush(timeout=30)
        finally:
            producer.close(timeout=5)


def _env(
    broker: TansuServer, topic: str, group: str, options: RestartOptions, mode: str, index: int
):
    env = worker_env(
        broker, topic, group, session_timeout_ms=options.session_timeout_ms,
        commit_interval_s=options.commit_interval_s, batch_max_records=50, metrics_port=0,
    )  # fmt: skip
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("GROUP_INSTANCE_ID", "PARTITION_ASSIGNMENT", "WORKER_ORDINAL", "WORKER_REPLICAS"):
        env.pop(f"TRAPLINE_{name}", None)
    if mode == "static":  # the chart uses the pod's name
        env["TRAPLINE_GROUP_INSTANCE_ID"] = f"pod{index}"
    elif mode == "ordinal":  # the chart: the pod's ordinal and the StatefulSet's replicas
        env["TRAPLINE_PARTITION_ASSIGNMENT"] = "ordinal"
        env["TRAPLINE_WORKER_ORDINAL"] = str(index)
        env["TRAPLINE_WORKER_REPLICAS"] = str(options.workers)
    env["TRAPLINE_WORKERS"] = str(options.serve_workers)
    return env


def _start(index: int, env: dict[str, str], out: Path, log: Path) -> _Worker:
    command = [sys.executable, "-m", "trapline", "serve", "--out", str(out)]  # --workers: env
    with log.open("ab") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    return _Worker(index, log, process, time.time())


def resume_lines(log: Path, since: float = 0.0) -> list[tuple[float, int]]:
    """(time, partition) of each "partition ... resumes" line in a worker's JSON log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if "resumes at offset" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        match = RESUME.search(record.get("message", ""))
        at = datetime.fromisoformat(record["time"]).timestamp()
        if match and at >= since:
            found.append((at, int(match["partition"])))
    return found


def _log_time(log: Path, since: float, starts: str, nonempty: bool = False) -> float | None:
    """Time of the first line after `since` whose message starts with `starts`."""
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = record.get("message", "") if isinstance(record, dict) else ""
        if not message.startswith(starts) or (nonempty and message.endswith("[]")):
            continue
        at = datetime.fromisoformat(record["time"]).timestamp()
        if at >= since:
            return at
    return None


def current_assignment(log: Path) -> set[int]:
    """The partitions of the worker's last rebalance: its last burst of "resumes" lines (an
    eager rebalance revokes everything and resumes each assigned partition at once)."""
    lines = resume_lines(log)
    if not lines:
        return set()
    last = lines[-1][0]
    return {partition for at, partition in lines if at >= last - 2.0}


def _visible(out: Path) -> dict[int, int]:
    """Per partition, the highest offset with a readable media or failures row."""
    highest: dict[int, int] = {}
    for table in ("media", "failures"):
        try:
            sources = read_table(str(out), table, columns=["source"]).column("source").to_pylist()
        except Exception:  # noqa: BLE001 - no commit of this table yet
            continue
        for source in sources:
            if source:
                _, partition, offset = split_source(source)
                highest[partition] = max(highest.get(partition, -1), offset)
    return highest


def _wait(condition, timeout_s: float, what: str, workers: list[_Worker]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.index} exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
        time.sleep(0.25)


def run_trial(mode: str, options: RestartOptions, say=print) -> dict:
    """One kill -9 and restart; the figures as a dict (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix=f"trapline-bench-restart-{mode}-"))
    out, photos = work / "out", work / "photos"
    out.mkdir()
    run = uuid.uuid4().hex[:6]
    topic, group = f"bench.restart.{run}", f"bench-restart-{mode}-{run}"
    workers: list[_Worker] = []
    producer: _Producer | None = None
    sender: threading.Thread | None = None
    try:
        with start_tansu() as broker:
            kafka_io.ensure_topics(broker.bootstrap, [topic, f"{topic}.dlq"], options.partitions)
            # One process per pod, each with its own id (the chart uses the pod's name); its
            # one consumer joins as "<id>-0". Dynamic: no id.
            envs = [_env(broker, topic, group, options, mode, i) for i in range(options.workers)]
            for index, env in enumerate(envs):
                workers.append(_start(index, env, out, work / f"worker-{index}.log"))
                time.sleep(1.0)  # worker 0 joins first
            producer = _Producer(broker, topic, photos, options.partitions, options.rate)
            sender = threading.Thread(target=producer.run, daemon=True)
            sender.start()

            def stable() -> bool:
                if len(_visible(out)) < options.partitions:
                    return False
                last = max((at for w in workers for at, _ in resume_lines(w.log)), default=0.0)
                return time.time() - last >= options.settle_s

            _wait(stable, options.timeout_s, "stable group with rows in every partition", workers)
            victim = workers[options.victim]
            owned = current_assignment(victim.log)
            if not owned:
                raise RuntimeError(f"worker {options.victim} owns no partition; nothing to time")
            killed_at = time.time()
            # The whole process tree, as when a container dies: with --serve-workers >= 1 the
            # Ray actor (under the process's own raylet) would otherwise write on for seconds.
            tree = descendants(victim.process.pid)
            victim.process.send_signal(signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            victim.process.wait()
            before = _visible(out)  # after the kill: a commit of the victim's last moment is before
            restarted = _start(victim.index, envs[victim.index], out, victim.log)
            workers[victim.index] = restarted
            say(f"  {mode}: killed worker {victim.index} (partitions {sorted(owned)}), restarted")

            first_row: dict[int, float] = {}  # partition -> seconds after the restart

            def recovered() -> bool:
                now = time.time()
                for partition, offset in _visible(out).items():
                    if partition not in first_row and offset > before.get(partition, -1):
                        first_row[partition] = now - restarted.started
                return owned <= set(first_row)

            try:
                _wait(recovered, options.timeout_s, "new rows in the victim's partitions", workers)
            except TimeoutError:  # the group never gave them back: a result, not a crash
                say(
                    f"  {mode}: no new row in {sorted(owned - set(first_row))} within {options.timeout_s:.0f} s"
                )
                return {
                    "mode": mode,
                    "session_timeout_ms": options.session_timeout_ms,
                    "victim_partitions": sorted(owned),
                    "hung": True,
                    "per_partition_s": {str(p): round(v, 2) for p, v in first_row.items()},
                    "restarted_worker_took_back": sorted(
                        {p for _, p in resume_lines(restarted.log, since=restarted.started)} & owned
                    ),
                }
            producer.stop.set()
            sender.join(60)
            sent = list(producer.sent)
            _wait(
                lambda: sum(_visible_counts(out)) >= len(sent),
                options.timeout_s,
                "a row for every event",
                workers,
            )
            for worker in workers:
                worker.process.send_signal(signal.SIGTERM)
            for worker in workers:
                stop_process(worker.process, 60)
            rows = _rows_per_uri(out)
            took_back = {p for _, p in resume_lines(restarted.log, since=restarted.started)}
            survivors = [w for w in workers if w is not restarted]
            taken_over = {
                p for w in survivors for _, p in resume_lines(w.log, since=killed_at)
            } & owned
            # Where the time went, from the restarted worker's log: its start-up until its
            # first JoinGroup, the group protocol until its first assignment (on Tansu mostly the
            # broker's holds), and from there to the rows (resume, processing, the commit).
            joining = _log_time(restarted.log, restarted.started, "(Re-)joining group")
            assigned = _log_time(
                restarted.log, restarted.started, "Updated partition assignment", nonempty=True
            )
            mine = [first_row[p] for p in owned]
            others = [v for p, v in first_row.items() if p not in owned]
            return {
                "mode": mode,
                "session_timeout_ms": options.session_timeout_ms,
                "victim_partitions": sorted(owned),
                "hung": False,
                "restart_to_first_row_s": round(min(mine), 2),
                "restart_to_all_partitions_s": round(max(mine), 2),
                "per_partition_s": {str(p): round(first_row[p], 2) for p in sorted(owned)},
                "start_to_join_s": round(joining - restarted.started, 2) if joining else None,
                "join_to_assignment_s": round(assigned - joining, 2)
                if joining and assigned
                else None,
                "assignment_to_rows_s": round(restarted.started + max(mine) - assigned, 2)
                if assigned
                else None,
                "other_partitions_s": round(max(others), 2) if others else None,
                "restarted_worker_took_back": sorted(took_back & owned),
                "survivor_took_over": sorted(taken_over),
                "sent": len(sent),
                "not_delivered": len(producer.failed),
                "duplicates": sum(n - 1 for n in rows.values() if n > 1),
                "losses": len({uri.removeprefix("file://") for uri in sent} - set(rows)),
            }
    finally:
        if producer is not None:
            producer.stop.set()
        for worker in workers:
            stop_process(worker.process, 5)
        if options.logs is not None:
            kept = options.logs / f"{mode}-{run}"
            kept.mkdir(parents=True, exist_ok=True)
            for log in work.glob("worker-*.log"):
                shutil.copy(log, kept / log.name)
        shutil.rmtree(work, ignore_errors=True)


def _visible_counts(out: Path) -> list[int]:
    counts = []
    for table in ("media", "failures"):
        try:
            counts.append(read_table(str(out), table, columns=["uri"]).num_rows)
        except Exception:  # noqa: BLE001 - no commit of this table yet
            counts.append(0)
    return counts


def _rows_per_uri(out: Path) -> dict[str, int]:
    rows: dict[str, int] = {}
    for table in ("media", "failures"):
        for uri in read_table(str(out), table, columns=["uri"]).column("uri").to_pylist():
            uri = uri.removeprefix("file://")
            rows[uri] = rows.get(uri, 0) + 1
    return rows


def run_restart_bench(options: RestartOptions, say=print) -> dict:
    """`trials` trials per mode; per mode the median of each figure."""
    result: dict = {
        "options": asdict(options) | {"logs": str(options.logs)},
        "trials": [],
        "summary": {},
    }
    for mode in options.modes:
        for trial in range(options.trials):
            say(f"restart trial {trial + 1}/{options.trials}, {mode} membership")
            figures = run_trial(mode, options, say)
            result["trials"].append(figures)
            if figures["hung"]:
                continue
            say(
                f"  {mode}: first row after {figures['restart_to_first_row_s']} s, all "
                f"partitions after {figures['restart_to_all_partitions_s']} s; taken back by "
                f"the restarted worker: {figures['restarted_worker_took_back']}, by a survivor: "
                f"{figures['survivor_took_over']}; {figures['duplicates']} duplicates, "
                f"{figures['losses']} losses of {figures['sent']}"
            )
        trials = [t for t in result["trials"] if t["mode"] == mode]
        runs = [t for t in trials if not t["hung"]]
        result["summary"][mode] = {
            key: round(statistics.median(t[key] for t in runs), 2) if runs else None
            for key in ("restart_to_first_row_s", "restart_to_all_partitions_s")
        } | {
            "each_all_partitions_s": [t["restart_to_all_partitions_s"] for t in runs],
            "each_start_join_assignment_rows_s": [
                [t["start_to_join_s"], t["join_to_assignment_s"], t["assignment_to_rows_s"]]
                for t in runs
            ],
            "trials": len(trials),
            "hung": len(trials) - len(runs),
            "duplicates": sum(t["duplicates"] for t in runs),
            "losses": sum(t["losses"] for t in runs),
        }
    return result
