"""When a chaos trial (load_tests/chaos.py) finds a record lost or doubled: where, from the
tables' own logs and the workers' logs, so the finding can be studied after the trial is gone.

For each record at fault (topic/partition/offset): the commits whose added files hold it (table,
version, operation, file, dataChange); around its offset, every commit of each table that carries
its partition's application transaction (version, operation, transaction version = the last
offset claimed, rows added); and the workers' log lines that name the partition. Read through
fsspec from `_delta_log/*.json`, so it works on local disk and S3 alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import fsspec
import pyarrow.parquet as pq

from trapline.pipelines.uploads import split_source

TABLES = ("observations", "events", "failures", "media")  # the commit order of a checkpoint
AROUND = 4  # commits kept on each side of the one that claims the offset
LOG_LINES = 200  # log lines kept per partition


def read_log(out: str, table: str) -> list[dict]:
    """Every commit of `table`: version, operation, app transactions, adds, removes."""
    fs, root = fsspec.core.url_to_fs(out.rstrip("/"))
    fs.invalidate_cache()
    commits = []
    for path in sorted(fs.glob(f"{root}/{table}/_delta_log/*.json")):
        actions = [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line]
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        commits.append({
            "version": int(Path(path).stem),
            "operation": info.get("operation"),
            "info": info,
            "txns": {a["txn"]["appId"]: a["txn"]["version"] for a in actions if "txn" in a},
            "adds": [a["add"] for a in actions if "add" in a],
            "removes": [a["remove"]["path"] for a in actions if "remove" in a],
        })  # fmt: skip
    return commits


def _rows(add: dict) -> int:
    return json.loads(add.get("stats") or "{}").get("numRecords", 0)


def files_holding(out: str, table: str, commits: list[dict], sources: set[str]) -> list[dict]:
    """The added files of `table` (any version, replaced or not) that hold one of `sources`."""
    fs, root = fsspec.core.url_to_fs(out.rstrip("/"))
    found = []
    for commit in commits:
        for add in commit["adds"]:
            with fs.open(f"{root}/{table}/{add['path']}", "rb") as handle:
                held = set(pq.read_table(handle, columns=["source"]).column("source").to_pylist())
            for source in sorted(held & sources):
                found.append({
                    "source": source, "table": table, "version": commit["version"],
                    "operation": commit["operation"], "file": add["path"],
                    "data_change": add.get("dataChange", True),
                })  # fmt: skip
    return found


def app_of(commits: list[dict], topic: str, partition: int) -> str | None:
    """The application id of topic/partition in these commits (`trapline:<group>:<topic>:<p>`;
    found, not rebuilt, so a change of its form upstream does not blind the diagnosis)."""
    suffix = f":{topic}:{partition}"
    return next((a for c in commits for a in c["txns"] if a.endswith(suffix)), None)


def partition_commits(commits: list[dict], app: str | None, offset: int) -> list[list]:
    """[version, operation, transaction version, rows added] of the commits carrying `app`,
    AROUND on each side of the first that claims `offset`, plus every OPTIMIZE among them."""
    claiming = [c for c in commits if app in c["txns"]]
    first = next((i for i, c in enumerate(claiming) if c["txns"][app] >= offset), len(claiming))
    window = claiming[max(first - AROUND, 0) : first + AROUND + 1]
    if not window:
        return []
    low, high = window[0]["version"], window[-1]["version"]
    picked = [
        c for c in commits if low <= c["version"] <= high and (app in c["txns"] or c["removes"])
    ]
    return [
        [c["version"], c["operation"], c["txns"].get(app), sum(_rows(a) for a in c["adds"]
                                                              if a.get("dataChange", True))]
        for c in picked
    ]  # fmt: skip


def log_lines(logs: list[Path], topic: str, partition: int) -> list[str]:
    """Lines of the workers' logs that name topic/partition (the last LOG_LINES of them)."""
    named = re.compile(rf"{re.escape(topic)}/{partition}\b")
    found = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if named.search(line):
                found.append(f"{log.name}: {line}")
    return found[-LOG_LINES:]


def diagnose(
    out: str, topic: str, problems: dict[str, str], lagging: list[int], logs: list[Path]
) -> dict:
    """`problems`: source -> what is wrong with it ("missing at the end", ...); `lagging`: the
    partitions whose committed offset stayed short of the records produced."""
    logs_by_table = {table: read_log(out, table) for table in TABLES}
    holding = []
    for table in ("media", "failures"):
        holding += files_holding(out, table, logs_by_table[table], set(problems))
    report: dict = {"problems": problems, "files_holding": holding, "partitions": {}}
    for source in sorted(problems):
        _, partition, offset = split_source(source)
        entry = _partition(report, logs, topic, partition)
        entry["commits"][str(offset)] = {
            table: partition_commits(commits, app_of(commits, topic, partition), offset)
            for table, commits in logs_by_table.items()
        }
    for partition in lagging:
        _partition(report, logs, topic, partition)
    report["tables_hold_up_to"] = {
        str(p): {t: last_claimed(c, app_of(c, topic, p)) for t, c in logs_by_table.items()}
        for p in sorted({int(p) for p in report["partitions"]})
    }
    return report


def last_claimed(commits: list[dict], app: str | None) -> int | None:
    """The last offset the table's log claims for `app` (its latest transaction version)."""
    versions = [c["txns"][app] for c in commits if app in c["txns"]]
    return max(versions) if versions else None


def _partition(report: dict, logs: list[Path], topic: str, partition: int) -> dict:
    entry = report["partitions"].get(str(partition))
    if entry is None:
        entry = {"commits": {}, "log": log_lines(logs, topic, partition)}
        report["partitions"][str(partition)] = entry
    return entry
