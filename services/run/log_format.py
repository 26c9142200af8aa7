"""Service-mode logs: one JSON object per line on standard output, from every worker.

Why stdout and why here: a pod's log (`kubectl logs`) is the container's stdout and stderr, and
a Ray actor's output reaches it only through the driver (services/run/local_ray.py forwards it
verbatim). So the driver and each actor configure the same formatter; an actor's lines carry
its `worker` index, and a line about a partition carries `topic`, `partition` and `offset`
when the caller passes them (`log.info(..., extra=partition_fields(tp, offset))`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

FIELDS = ("topic", "partition", "offset")  # taken from a record's `extra=` when present


class JsonLines(logging.Formatter):
    """A record as one JSON object: time, level, logger, worker, message (+ partition fields)."""

    def __init__(self, worker: int | None = None):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
        }
        if self.worker is not None:
            line["worker"] = self.worker
        for name in FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_json_logging(worker: int | None = None, level: int = logging.INFO) -> None:
    """Route this process's log records to stdout as JSON lines (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLines(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def partition_fields(tp: Any, offset: int | None = None) -> dict[str, Any]:
    """`extra=` for a log line about one partition (a kafka TopicPartition) and offset."""
    fields: dict[str, Any] = {"topic": tp.topic, "partition": tp.partition}
    if offset is not None:
        fields["offset"] = offset
    return fields
