"""A reader of the result tables as an analyst's process would be one: it polls media and
failures through their Delta logs (`read_table`) while the workers write, die and compact, and
notes every moment the exactly-once promise is broken for a reader, not only at the end.

    python -m load_tests.table_poller OUT STOP REPORT [INTERVAL_S]

Per poll, on the latest version of each table: a media_id or uri twice in media, a record (its
`source`, topic/partition/offset) twice in media and failures together, and any row (by source)
seen in an earlier poll and missing now: a lost row, which a reader of the earlier version
already used. Runs until the file STOP exists, polls once more (the end state), then writes its
findings to REPORT (JSON).
A separate process so that its reads race the writers as a real reader's do.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trapline.pipelines.delta import open_table
from trapline.pipelines.readers import read_table

COLUMNS = {"media": ["media_id", "uri", "source"], "failures": ["uri", "source"]}
KEEP = 50  # findings kept in full per kind (the counts are exact)


@dataclass
class Findings:
    polls: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    doubled: int = 0  # distinct (what, value) seen twice in some poll
    lost: int = 0  # distinct (table, source) seen once and missing in a later poll
    most_rows: int = 0  # media + failures rows in one poll
    last_rows: int = 0  # media + failures rows in the last poll (after STOP: the end state)
    doubled_seen: list[dict] = field(default_factory=list)
    lost_seen: list[dict] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # at the last poll


class Watch:
    """The poller's memory: what each table showed so far, and what was wrong."""

    def __init__(self) -> None:
        self.found = Findings()
        self.seen: dict[str, dict[str, int]] = {"media": {}, "failures": {}}  # source -> version
        self.doubled_keys: set[tuple[str, str]] = set()
        self.lost_keys: set[tuple[str, str]] = set()

    def poll(self, out: str) -> None:
        versions, rows = {}, {}
        for table, columns in COLUMNS.items():
            delta = open_table(out, table)
            versions[table] = -1 if delta is None else delta.version()
            if delta is None:
                rows[table] = {name: [] for name in columns}
            else:
                data = read_table(out, table, columns, version=versions[table])
                rows[table] = {name: data.column(name).to_pylist() for name in columns}
        self.found.polls += 1
        self.found.versions = versions
        media, failures = rows["media"], rows["failures"]
        self.found.last_rows = len(media["source"]) + len(failures["source"])
        self.found.most_rows = max(self.found.most_rows, self.found.last_rows)
        for what, values in (
            ("media_id in media", media["media_id"]),
            ("uri in media", media["uri"]),
            ("source in media+failures", media["source"] + failures["source"]),
        ):
            for value, count in Counter(values).items():
                if count > 1 and value is not None:
                    self._doubled(what, value, count, versions)
        for table in COLUMNS:
            now = set(rows[table]["source"]) - {None}  # a folder run's rows have none
            for source in self.seen[table].keys() - now:
                self._lost(table, source, self.seen[table][source], versions[table])
            for source in now:
                self.seen[table].setdefault(source, versions[table])

    def _doubled(self, what: str, value: str, count: int, versions: dict) -> None:
        if (what, value) in self.doubled_keys:
            return
        self.doubled_keys.add((what, value))
        self.found.doubled += 1
        if len(self.found.doubled_seen) < KEEP:
            self.found.doubled_seen.append(
                {"poll": self.found.polls, "at": time.time(), "what": what, "value": value,
                 "count": count, "versions": dict(versions)}
            )  # fmt: skip

    def _lost(self, table: str, source: str, seen_at: int, now: int) -> None:
        if (table, source) in self.lost_keys:
            return
        self.lost_keys.add((table, source))
        self.found.lost += 1
        if len(self.found.lost_seen) < KEEP:
            self.found.lost_seen.append(
                {"poll": self.found.polls, "at": time.time(), "table": table, "source": source,
                 "first_seen_at_version": seen_at, "missing_at_version": now}
            )  # fmt: skip

    def error(self, error: Exception) -> None:
        self.found.errors += 1
        if len(self.found.first_errors) < 5:
            self.found.first_errors.append(f"{type(error).__name__}: {error}"[:500])


def main(argv: list[str]) -> None:
    out, stop, report = argv[0], Path(argv[1]), Path(argv[2])
    interval = float(argv[3]) if len(argv) > 3 else 1.0
    if "://" in out:  # the S3 endpoint and keys from TRAPLINE_S3_*, as the workers get them
        from trapline.services.adapters.object_store import configure_fsspec
        from trapline.services.settings import Settings

        configure_fsspec(Settings())
    watch = Watch()
    while True:
        last = stop.exists()  # one more poll after STOP appears: the end state, read as a reader
        started = time.monotonic()
        try:
            watch.poll(out)
        except Exception as error:  # noqa: BLE001 - a read that failed is a finding too
            watch.error(error)
        if last:
            break
        time.sleep(max(0.0, started + interval - time.monotonic()))
    report.write_text(json.dumps(asdict(watch.found), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
