"""Exactly once under kill -9, compaction and a polling reader: the promise checked from outside.

    .venv/bin/python -m load_tests --mode chaos                  # 5 trials, tables on local disk
    .venv/bin/python -m load_tests --mode chaos --storage s3     # tables on Ceph RGW

Trapline promises that a reader of the result tables sees every upload exactly once (DESIGN.md,
"Result tables"). The suite checks the parts; this checks the whole as an operator would see it,
with only the CLI, the broker and a table reader, over many random failures (issue 36, "How it
will be checked"). One trial:

- a fresh Tansu broker, a topic of `partitions` partitions, and `workers` real `trapline serve
  --workers 0` processes in one consumer group, committing every `commit_interval_s` (so their
  own compaction, every 50 versions of a table, comes often) in small batches; each restarted at
  once when it dies, as Kubernetes would;
- uploads trickled in for `trickle_s` (load_tests/chaos_inputs.py): small photos, a few corrupt,
  a few malformed messages, and photos submitted again (the same event, and the same bytes under
  a new name) that must end as `duplicate` failures rows;
- `trapline compact OUT` in a loop the whole time; an exit because another compactor holds the
  compaction lease is counted as skipped, not an error;
- kill -9 of a random worker at `kills` random moments while the uploads come, restarted at once;
- a reader process (load_tests/table_poller.py) polling media and failures every second, noting
  any row shown twice and any row shown once and missing later.

At the end, once the uploads stopped and the group drained (every record has its row and every
partition's committed offset reached what was produced: a condition, not a wait): each record
produced is in exactly one row of media or failures, in the right one (its `source` says which
record it is), media_id and uri unique in media, every failures row has its dead-letter record,
and the lag is 0. Offsets are counted as produced, never asked of the broker (Tansu's high
watermark is wrong, DESIGN.md). A trial that breaks the promise keeps its workers' logs, its
tables (local disk) and a diagnosis (load_tests/chaos_diagnose.py) in the report folder.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

from load_tests.chaos_checks import (
    account,
    committed_offsets,
    compaction_counts,
    dead_letters_missing,
)
from load_tests.chaos_diagnose import diagnose
from load_tests.chaos_inputs import Mix, Trickle, build_plan
from load_tests.chaos_processes import CompactLoop, Pod
from load_tests.stream import worker_env
from trapline.pipelines.readers import read_table
from trapline.services.adapters import kafka_io
from trapline.services.devstack.tansu import TansuServer, start_tansu


@dataclass
class ChaosOptions:
    trials: int = 5
    mix: Mix = field(default_factory=Mix)
    trickle_s: float = 75.0  # the uploads are spread over this long
    kills: int = 6  # kill -9 per trial, at random moments while the uploads come
    workers: int = 2
    partitions: int = 4
    commit_interval_s: float = 0.2
    # A camera's last burst waits this long for more photos before it is committed (default 5 s):
    # shorter, so that commits come as often as the interval allows and the tables pass the
    # writers' compaction (every 50 versions) several times a trial.
    sequence_hold_s: float = 1.0
    batch_max_records: int = 20
    batch_size: int = 8
    session_timeout_ms: int = 6000  # Tansu assigns a new group after half of it
    compact_pause_s: float = 1.0  # between two `trapline compact` runs
    poll_interval_s: float = 1.0  # the reader's
    drain_timeout_s: float = 180.0  # for the group to catch up after the last upload
    storage: str = "local"  # or "s3": the tables on Ceph RGW
    seed: int = 0
    logs: Path | None = None  # each trial's logs are kept here


def _storage(options: ChaosOptions, stack: contextlib.ExitStack) -> dict[str, str]:
    """The workers' environment for the tables' storage; for S3 a Ceph RGW (one for all trials)
    is started, this process's fsspec and delta-rs pointed at it, a bucket made per trial by
    `_new_root`."""
    if options.storage == "local":
        return {}
    from trapline.services.adapters.object_store import configure_fsspec
    from trapline.services.devstack.ceph import start_ceph_rgw

    rgw = stack.enter_context(start_ceph_rgw())
    settings = SimpleNamespace(
        s3_endpoint_url=rgw.endpoint_url, s3_region=rgw.region,
        s3_access_key_id=rgw.access_key, s3_secret_access_key=rgw.secret_key, s3_verify=True,
    )  # fmt: skip
    configure_fsspec(settings)
    return {f"TRAPLINE_{k.upper()}": str(v) for k, v in vars(settings).items()}


def _new_root(options: ChaosOptions, work: Path) -> str:
    if options.storage == "local":
        return str(work / "out")
    import fsspec

    bucket = f"chaos-{uuid.uuid4().hex[:10]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}/out"


def _sources(out: str) -> tuple[list[str], list[str]]:
    """The `source` of every media row and every failures row."""
    media = read_table(out, "media", ["source"]).column("source").to_pylist()
    failures = read_table(out, "failures", ["source"]).column("source").to_pylist()
    return media, failures


def _kill_at_random(pods: list[Pod], options: ChaosOptions, until: float, rng: random.Random):
    """`options.kills` kill -9 at random moments before `until` (monotonic), a victim chosen
    among the pods up for 3 s or more; the pods are watched (and restarted) meanwhile."""
    now = time.monotonic()
    moments = sorted(now + rng.uniform(0, max(until - now, 2.0 * options.kills))
                     for _ in range(options.kills))  # fmt: skip
    for moment in moments:
        while time.monotonic() < moment:
            for pod in pods:
                pod.check()
            time.sleep(0.1)
        settled = [p for p in pods if time.monotonic() - p.started >= 3.0] or pods
        rng.choice(settled).kill()


def _wait(condition, timeout_s: float, pods: list[Pod]) -> bool:
    """Poll `condition` every second (restarting any pod that died); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pod in pods:
            pod.check()
        with contextlib.suppress(Exception):  # a table being created: try again
            if condition():
                return True
        time.sleep(1.0)
    return False


@dataclass
class Trial:
    """One trial's running parts, started in `run_trial` and stopped in its `finally`."""

    broker: TansuServer
    topic: str
    group: str
    out: str
    work: Path
    env: dict[str, str]
    pods: list[Pod] = field(default_factory=list)
    compactor: CompactLoop | None = None
    poller: subprocess.Popen | None = None
    diagnosis: dict | None = None  # where a broken promise broke (load_tests/chaos_diagnose.py)

    def start_poller(self, interval_s: float) -> None:
        command = [
            sys.executable,
            "-m",
            "load_tests.table_poller",
            self.out,
            str(self.work / "poller.stop"),
            str(self.work / "poller.json"),
            str(interval_s),
        ]
        log = (self.work / "poller.log").open("wb")  # noqa: SIM115 - closed by the process
        self.poller = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def stop_poller(self) -> dict:
        (self.work / "poller.stop").touch()
        self.poller.wait(120)
        report = self.work / "poller.json"
        if not report.exists():
            raise RuntimeError(
                f"the poller wrote no report: {(self.work / 'poller.log').read_text()[-2000:]}"
            )
        return json.loads(report.read_text())


def run_trial(number: int, options: ChaosOptions, extra_env: dict, say=print) -> dict:
    """One trial (the module docstring); its figures, and what it found wrong."""
    work = Path(tempfile.mkdtemp(prefix="trapline-chaos-"))
    rng = random.Random(options.seed * 1000 + number)
    run = uuid.uuid4().hex[:6]
    topic, group = f"chaos.uploads.{run}", f"chaos-{run}"
    plan = build_plan(
        work / "photos", options.mix, options.partitions, options.seed * 1000 + number
    )
    began = time.monotonic()
    with start_tansu() as broker:
        kafka_io.ensure_topics(broker.bootstrap, [topic, f"{topic}.dlq"], options.partitions)
        env = worker_env(
            broker, topic, group, session_timeout_ms=options.session_timeout_ms,
            commit_interval_s=options.commit_interval_s, batch_max_records=options.batch_max_records,
            batch_size=options.batch_size, sequence_hold_s=options.sequence_hold_s, metrics_port=0,
        ) | extra_env | {"PYTHONUNBUFFERED": "1"}  # fmt: skip
        trial = Trial(broker, topic, group, _new_root(options, work), work, env)
        try:
            return _drive(trial, plan, options, rng, began, say)
        finally:
            _stop_all(trial)
            _keep_logs(trial, options, number)
            shutil.rmtree(work, ignore_errors=True)


def _drive(trial: Trial, plan, options: ChaosOptions, rng, began: float, say) -> dict:
    trial.pods = [Pod(i, trial.env, trial.out, trial.work / f"worker-{i}.log")
                  for i in range(options.workers)]  # fmt: skip
    trickle = Trickle(trial.broker.bootstrap, trial.topic, plan, options.trickle_s)
    threading.Thread(target=trickle.run, daemon=True).start()
    trickle_end = time.monotonic() + options.trickle_s
    trial.compactor = CompactLoop(
        trial.out, trial.env, options.compact_pause_s, trial.work / "compact.log"
    )
    trial.compactor.start()
    trial.start_poller(options.poll_interval_s)
    if not _wait(lambda: sum(map(len, _sources(trial.out))) > 0, 180, trial.pods):
        raise RuntimeError("no row within 180 s of the start: see the workers' logs")
    _kill_at_random(trial.pods, options, trickle_end, rng)
    _wait(trickle.done.is_set, options.trickle_s + 120, trial.pods)
    produced = trickle.produced()
    offsets: dict[int, int] = {}

    def drained() -> bool:
        media, failures = _sources(trial.out)
        if len(set(media) | set(failures)) < len(trickle.landed):
            return False
        offsets.update(
            committed_offsets(trial.broker.bootstrap, trial.group, trial.topic, options.partitions)
        )
        return all(offsets.get(p, 0) >= n for p, n in produced.items())

    is_drained = _wait(drained, options.drain_timeout_s, trial.pods)
    trial.compactor.finish()
    seen = trial.stop_poller()
    for pod in trial.pods:
        pod.stop()
    offsets = committed_offsets(
        trial.broker.bootstrap, trial.group, trial.topic, options.partitions
    )
    end = account(trial.out, trial.topic, trickle.landed)
    no_letter = dead_letters_missing(
        trial.broker.bootstrap, trial.topic, end.pop("failures_sources")
    )
    return _figures(trial, trickle, options, seen, end, no_letter, offsets, is_drained, began)


def _figures(trial, trickle, options, seen, end, no_letter, offsets, is_drained, began) -> dict:
    produced = trickle.produced()
    lag = {str(p): produced.get(p, 0) - offsets.get(p, 0) for p in range(options.partitions)}
    kinds = Counter(item.kind for item in trickle.landed.values())
    figures = {
        "submitted": len(trickle.landed),
        "submitted_by_kind": dict(sorted(kinds.items())),
        "not_delivered": len(trickle.failed),
        "kills": sum(p.kills for p in trial.pods),
        "crashes": [code for p in trial.pods for code in p.crashes],
        "compactions_run": trial.compactor.runs,
        "compactions_skipped": trial.compactor.skipped,
        "compactions_repaired": trial.compactor.repaired,
        "compaction_errors": trial.compactor.errors[:5],
        "compaction_in_tables": compaction_counts(trial.out),
        "reader_polls": seen["polls"],
        "reader_errors": seen["errors"],
        "reader_first_errors": seen["first_errors"],
        "reader_most_rows": seen["most_rows"],
        "reader_last_rows": seen["last_rows"],
        "duplicates_seen": seen["doubled"],
        "rows_lost": seen["lost"],
        "drained": is_drained,
        "missing_at_end": len(end["missing"]),
        "doubled_at_end": len(end["doubled"]),
        "unexpected_at_end": len(end["unexpected"]),
        "wrong_table_at_end": len(end["wrong_table"]),
        "dead_letters_missing": len(no_letter),
        "produced_per_partition": {str(p): produced.get(p, 0) for p in range(options.partitions)},
        "committed_per_partition": {str(p): offsets.get(p, 0) for p in range(options.partitions)},
        "lag_at_end": lag,
        "rows": {
            k: end[k] for k in ("media_rows", "failures_rows", "duplicate_rows", "event_rows")
        },
        "wall_s": round(time.monotonic() - began, 1),
    }
    # The promise has two halves: what a reader sees (rows), and what the group's committed
    # offsets say (lag, what KEDA and the lag alert read).
    figures["rows_exactly_once"] = not (
        seen["doubled"] or seen["lost"] or end["missing"] or end["doubled"] or end["unexpected"]
        or end["wrong_table"] or no_letter
    )  # fmt: skip
    figures["lag_zero"] = not any(lag.values())
    figures["kept"] = figures["rows_exactly_once"] and figures["lag_zero"]
    if not figures["kept"]:
        _find(trial, figures, seen, end, no_letter, lag)
    return figures


def _find(trial: Trial, figures: dict, seen: dict, end: dict, no_letter: list, lag: dict) -> None:
    """What broke, in the figures, and where (the diagnosis, kept with the trial's logs)."""
    problems = {s: "missing at the end" for s in end["missing"]}
    problems |= {s: "doubled at the end" for s in end["doubled"] if " " not in s}
    problems |= {f["source"]: f"lost in poll {f['poll']}" for f in seen["lost_seen"]}
    problems |= {f["value"]: f"twice in poll {f['poll']}" for f in seen["doubled_seen"]
                 if f["what"].startswith("source")}  # fmt: skip
    figures["found"] = {
        "missing": end["missing"], "doubled": end["doubled"], "unexpected": end["unexpected"],
        "wrong_table": end["wrong_table"], "dead_letters_missing": no_letter,
        "reader_doubled": seen["doubled_seen"], "reader_lost": seen["lost_seen"],
    }  # fmt: skip
    lagging = [int(p) for p, n in lag.items() if n]
    logs = [p.log for p in trial.pods]
    trial.diagnosis = diagnose(trial.out, trial.topic, problems, lagging, logs)
    figures["found"]["tables_hold_up_to"] = trial.diagnosis["tables_hold_up_to"]


def _stop_all(trial: Trial) -> None:
    if trial.compactor is not None:
        trial.compactor.finish()
    if trial.poller is not None and trial.poller.poll() is None:
        (trial.work / "poller.stop").touch()
        with contextlib.suppress(subprocess.TimeoutExpired):
            trial.poller.wait(60)
    for pod in trial.pods:
        pod.stop(30)


def _keep_logs(trial: Trial, options: ChaosOptions, number: int) -> None:
    """The workers', the compactor's and the poller's logs, in `options.logs`/trial-N; with a
    diagnosis, that too and the tables (local disk)."""
    if options.logs is None:
        return
    kept = options.logs / f"trial-{number}"
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("worker-*.log", "compact.log", "poller.json", "poller.log"):
        for path in trial.work.glob(name):
            shutil.copy(path, kept / path.name)
    if trial.diagnosis is not None:
        (kept / "diagnosis.json").write_text(json.dumps(trial.diagnosis, indent=1))
        if options.storage == "local":
            shutil.copytree(trial.out, kept / "tables", dirs_exist_ok=True)


def run_chaos(options: ChaosOptions, say=print) -> dict:
    """`options.trials` trials; the figures of each and whether all kept the promise."""
    result: dict = {"options": _described(options), "trials": []}
    with contextlib.ExitStack() as stack:
        extra_env = _storage(options, stack)
        for number in range(1, options.trials + 1):
            say(f"chaos trial {number}/{options.trials} ({options.storage})")
            figures = run_trial(number, options, extra_env, say)
            result["trials"].append(figures)
            say("  " + summary_line(number, figures))
    result["kept"] = all(t["kept"] for t in result["trials"])
    return result


def _described(options: ChaosOptions) -> dict:
    described = asdict(options)
    described["logs"] = str(options.logs) if options.logs else None
    return described


COLUMNS = (
    ("trial", 5), ("submitted", 9), ("kills", 5), ("compact run/skip", 16), ("polls", 5),
    ("dup seen", 8), ("lost", 4), ("missing", 7), ("doubled", 7), ("lag end", 9), ("wall s", 6),
)  # fmt: skip


def summary_line(number: int, t: dict) -> str:
    values = (
        number, t["submitted"], t["kills"], f"{t['compactions_run']}/{t['compactions_skipped']}",
        t["reader_polls"], t["duplicates_seen"], t["rows_lost"], t["missing_at_end"],
        t["doubled_at_end"], ",".join(str(v) for v in t["lag_at_end"].values()), t["wall_s"],
    )  # fmt: skip
    cells = [str(v).rjust(w) for v, (_, w) in zip(values, COLUMNS)]
    broken = [half for half in ("rows_exactly_once", "lag_zero") if not t.get(half, t["kept"])]
    return " | ".join(cells) + (f"  <- BROKEN: {', '.join(broken)}" if broken else "")


def table(result: dict) -> list[str]:
    header = " | ".join(name.rjust(w) for name, w in COLUMNS)
    lines = [header, "-" * len(header)]
    lines += [summary_line(i, t) for i, t in enumerate(result["trials"], 1)]
    return lines
