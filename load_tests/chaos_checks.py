"""The end checks of a chaos trial (load_tests/chaos.py): each record produced in exactly one
row, the right one; every failures row with its dead letter; the group's committed offsets; and
what the tables' logs say about compaction."""

from __future__ import annotations

from collections import Counter

from load_tests.chaos_diagnose import TABLES, read_log
from load_tests.chaos_inputs import Planned
from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import record_source
from trapline.services.adapters import kafka_io


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset of each partition (0 where none), from the broker."""
    from kafka import TopicPartition

    consumer = kafka_io.make_consumer(bootstrap, group, client_id="trapline-chaos-check")
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def account(out: str, topic: str, landed: dict[tuple[int, int], Planned]) -> dict:
    """Each record produced in exactly one row, the right one; media_id and uri unique."""
    media = read_table(out, "media", ["media_id", "uri", "source"]).to_pydict()
    failures = read_table(out, "failures", ["stage", "kind", "source"]).to_pydict()
    rows = Counter(media["source"] + failures["source"])
    expected = {record_source(topic, p, o): item for (p, o), item in landed.items()}
    failed = dict(zip(failures["source"], zip(failures["stage"], failures["kind"])))
    in_media = set(media["source"])
    wrong = [
        s
        for s, item in expected.items()
        if s in rows and not _ended_right(item, s, in_media, failed)
    ]
    doubled = [s for s, n in rows.items() if n > 1]
    doubled += [f"media_id {m}" for m, n in Counter(media["media_id"]).items() if n > 1]
    doubled += [f"uri {u}" for u, n in Counter(media["uri"]).items() if n > 1]
    return {
        "media_rows": len(media["source"]),
        "failures_rows": len(failures["source"]),
        "duplicate_rows": sum(kind == "duplicate" for kind in failures["kind"]),
        "event_rows": sum(stage == "event" for stage in failures["stage"]),
        "missing": sorted(set(expected) - set(rows)),
        "doubled": sorted(doubled),
        "unexpected": sorted(set(rows) - set(expected)),
        "wrong_table": sorted(wrong),
        "failures_sources": [s for s in failures["source"] if s],
    }


def _ended_right(item: Planned, source: str, in_media: set[str], failed: dict) -> bool:
    if item.kind == "photo":
        return source in in_media
    if source not in failed:
        return False
    stage, kind = failed[source]
    return {"corrupt": kind != "duplicate", "malformed": stage == "event"}.get(
        item.kind, kind == "duplicate"
    )


def compaction_counts(out: str) -> dict:
    """From the tables' own logs: OPTIMIZE commits per table, and who took the compaction lease
    (distinct holders: a writer's own compaction, or a `trapline compact`)."""
    from trapline.pipelines.compaction_lease import HOLDER, LEASE_TABLE

    optimized = {t: sum(c["operation"] == "OPTIMIZE" for c in read_log(out, t)) for t in TABLES}
    holders = {c["info"].get(HOLDER) for c in read_log(out, LEASE_TABLE)} - {None}
    return {
        "optimize_commits": optimized,
        "lease_taken_by_writers": sum(h.startswith("writer") for h in holders),
        "lease_taken_by_compact": sum(h.startswith("trapline compact") for h in holders),
        "table_versions": {t: max((c["version"] for c in read_log(out, t)), default=-1)
                           for t in TABLES},
    }  # fmt: skip


def dead_letters_missing(bootstrap: str, topic: str, sources: list[str]) -> list[str]:
    """The failures rows whose record has no dead-letter record (read until quiet: Tansu's
    end offsets cannot say where the topic ends)."""
    records = kafka_io.read_topic(bootstrap, f"{topic}.dlq", 10 * len(sources) + 10, timeout_s=6)
    sent = set()
    for record in records:
        letter = kafka_io.DeadLetterRecord.from_record(record)
        origin = (letter.original_topic, letter.original_partition, letter.original_offset)
        if None not in origin:
            sent.add(record_source(*origin))
    return sorted(set(sources) - sent)
