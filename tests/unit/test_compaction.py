"""One compactor at a time (pipelines/compaction_lease.py) and the check after every OPTIMIZE
(pipelines/compaction.py), on a local disk."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from prometheus_client import REGISTRY
from support.compaction_race import race
from support.delta_commits import commit_photos

from trapline.pipelines import compaction, delta
from trapline.pipelines.compaction import OverlapNotRepaired, optimize, repair_overlap
from trapline.pipelines.compaction_lease import (
    CompactionLease,
    LeaseHeld,
    LeaseLost,
    LeaseState,
)
from trapline.pipelines.readers import read_table
from trapline.services.run import metrics  # noqa: F401  (registers the overlap counter)

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class BrokenLease:
    """What a compactor holds when the lease failed it (a clock that lies, an OPTIMIZE longer
    than the lease): `optimize` goes ahead."""

    def ensure(self) -> None:
        pass


def overlaps(outcome: str) -> float:
    """The service's counter (services/run/metrics.py registers it with pipelines/compaction)."""
    value = REGISTRY.get_sample_value(
        "trapline_compaction_overlaps_total", {"table": "media", "outcome": outcome}
    )
    return value or 0.0


# -- the lease


def test_the_lease_records_holder_and_expiry_and_is_free_once_released(tmp_path):
    clock = Clock()
    lease = CompactionLease(str(tmp_path), "compactor A", ttl=timedelta(minutes=10), clock=clock)
    assert lease.read() == LeaseState(0, None, None, held=False)
    lease.take()
    assert lease.read() == LeaseState(1, "compactor A", T0 + timedelta(minutes=10), held=True)
    assert lease.held and lease.time_left() == timedelta(minutes=10)
    clock.now += timedelta(minutes=4)
    lease.renew()
    assert lease.read().expires_at == T0 + timedelta(minutes=14)
    lease.release()
    state = lease.read()
    assert (state.epoch, state.held, state.holds(clock.now)) == (3, False, False)
    assert not lease.held
    CompactionLease(str(tmp_path), "compactor B", clock=clock).take()  # free for the next


def test_a_second_taker_is_refused_with_the_holder_and_expiry_until_it_is_released(tmp_path):
    clock = Clock()
    first = CompactionLease(str(tmp_path), "writer on host-1", clock=clock)
    second = CompactionLease(str(tmp_path), "trapline compact on host-2", clock=clock)
    first.take()
    with pytest.raises(LeaseHeld) as held:
        second.take()
    assert held.value.holder == "writer on host-1"
    assert held.value.expires_at == T0 + timedelta(minutes=10)
    assert "held by writer on host-1 until 2026-06-01 12:10:00 UTC (600 s from now)" in str(
        held.value
    )
    assert first.read().holder == "writer on host-1"  # the refusal committed nothing
    first.release()
    second.take()
    assert second.read().holder == "trapline compact on host-2"


def test_processes_taking_the_lease_at_the_same_moment_one_wins_the_others_are_told_who(tmp_path):
    """Four processes read the lease (epoch 0), meet at a barrier, then all commit epoch 1:
    delta-rs lets one commit and refuses the others (the compare-and-swap)."""
    for _round in range(3):
        outcomes = race(str(tmp_path), 4)
        [winner] = [holder for holder, outcome in outcomes.items() if outcome == "took"]
        assert {h: o for h, o in outcomes.items() if h != winner} == {
            h: f"held by {winner}" for h in outcomes if h != winner
        }
        assert CompactionLease(str(tmp_path)).read().holder == winner
        CompactionLease(str(tmp_path), winner)._epoch = None  # noqa: SLF001 (not ours to release)
        # the winner's process is gone: its lease is released as it would expire
        clock = Clock(datetime.now(timezone.utc) + timedelta(minutes=11))
        late = CompactionLease(str(tmp_path), "after the round", clock=clock)
        late.take()
        late.release()


def test_threads_taking_the_lease_at_once_exactly_one_holds_it(tmp_path):
    root = str(tmp_path)
    CompactionLease(root).read()  # the lease's table exists: the race is on the epoch
    start = threading.Barrier(6)
    outcomes: dict[str, str] = {}

    def take(name: str) -> None:
        lease = CompactionLease(root, name)
        start.wait()
        try:
            lease.take()
            outcomes[name] = "took"
        except LeaseHeld as held:
            outcomes[name] = f"held by {held.holder}"

    threads = [threading.Thread(target=take, args=(f"thread-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [name for name, outcome in outcomes.items() if outcome == "took"]
    assert len(winners) == 1 and len(outcomes) == 6
    assert all(o == f"held by {winners[0]}" for n, o in outcomes.items() if n != winners[0])


def test_an_expired_lease_is_taken_over_and_its_old_holder_loses_it(tmp_path):
    clock = Clock()
    dead = CompactionLease(str(tmp_path), "crashed compactor", clock=clock)
    dead.take()
    other = CompactionLease(str(tmp_path), "next compactor", clock=clock)
    clock.now += timedelta(minutes=9, seconds=59)
    with pytest.raises(LeaseHeld):
        other.take()
    clock.now += timedelta(seconds=1)  # expired
    other.take()
    assert other.read().holder == "next compactor"
    with pytest.raises(LeaseLost, match="taken by next compactor"):
        dead.renew()
    assert not dead.held
    dead.release()  # nothing to release: no commit, no error
    assert other.read().holder == "next compactor"


def test_a_holder_whose_lease_expired_unnoticed_by_others_keeps_it_by_renewing(tmp_path):
    clock = Clock()
    lease = CompactionLease(str(tmp_path), "slow compactor", clock=clock)
    lease.take()
    clock.now += timedelta(minutes=30)  # expired, but nobody took it: the epoch did not move
    lease.renew()
    assert lease.read().holds(clock.now)


def test_ensure_renews_only_when_less_than_half_the_ttl_is_left(tmp_path):
    clock = Clock()
    lease = CompactionLease(str(tmp_path), "compactor", ttl=timedelta(minutes=10), clock=clock)
    lease.take()
    clock.now += timedelta(minutes=4)
    lease.ensure()
    assert lease.read().epoch == 1  # 6 minutes left: no commit
    clock.now += timedelta(minutes=2)
    lease.ensure()
    assert lease.read() == LeaseState(2, "compactor", clock.now + timedelta(minutes=10), True)


def test_waiting_for_a_lease_whose_holder_died_takes_it_once_it_expires(tmp_path):
    """A tiny TTL and a wait for the condition: no bound on how long it takes."""
    dead = CompactionLease(str(tmp_path), "crashed", ttl=timedelta(milliseconds=300))
    dead.take()
    waiting = CompactionLease(str(tmp_path), "patient")
    waiting.take(wait=timedelta(minutes=5), poll_s=0.05)
    assert waiting.read().holder == "patient"


# -- every OPTIMIZE needs the lease


def test_a_holder_that_cannot_renew_does_not_optimize(tmp_path):
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    clock = Clock(datetime.now(timezone.utc))
    lease = CompactionLease(root, "slow", clock=clock)
    lease.take()
    clock.now += timedelta(minutes=11)
    CompactionLease(root, "other", clock=clock).take()  # took the expired lease over
    table = delta.open_table(root, "media")
    version = table.version()
    with pytest.raises(LeaseLost):
        optimize(table, lease)
    assert delta.open_table(root, "media").version() == version  # nothing merged


def test_writers_skip_compaction_while_another_holds_the_lease_and_compact_once_free(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(delta, "COMPACT_EVERY_VERSIONS", 4)
    root = str(tmp_path)
    holder = CompactionLease(root, "trapline compact on ops-1")
    holder.take()
    caplog.set_level(logging.INFO, logger="trapline.pipelines.compaction")
    for batch in range(4):  # version 4 lands on the multiple: the writer tries, and skips
        commit_photos(root, batch * 5, 5)
    assert len(delta.open_table(root, "media").file_uris()) == 4
    assert "small files left for later" in caplog.text
    assert "held by trapline compact on ops-1" in caplog.text
    assert holder.read().holder == "trapline compact on ops-1"  # untouched by the writer
    holder.release()
    for batch in range(4, 8):  # version 8: the lease is free, the writer merges
        commit_photos(root, batch * 5, 5)
    assert len(delta.open_table(root, "media").file_uris()) == 1
    assert CompactionLease(root).read().held is False  # and released it
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert sorted(ids) == [f"m{i:05d}" for i in range(40)]


# -- the check after every OPTIMIZE


def test_an_optimize_alone_sees_no_overlap(tmp_path):
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    with CompactionLease(root) as lease:
        merged = optimize(delta.open_table(root, "media"), lease)
    assert (merged.files_removed, merged.files_added, merged.repaired_at) == (3, 1, None)
    assert merged.version == 4
    with CompactionLease(root) as lease:  # nothing left to merge: no commit
        assert optimize(delta.open_table(root, "media"), lease).version is None


def test_an_optimize_overlapping_another_is_repaired_by_the_later_and_later_appends_stay(
    tmp_path, caplog
):
    """Two snapshots in one process both compact (a broken lease); the later, through
    `optimize`, sees the earlier in its range, undoes its own rewrite but for the file only it
    removed, and a writer's commits before and after the repair stay."""
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    earlier = delta.open_table(root, "media")  # version 3: three files
    commit_photos(root, 15, 5)  # version 4: a fourth file only the later snapshot sees
    later = delta.open_table(root, "media")
    earlier.optimize.compact()  # version 5: merges the three
    commit_photos(root, 20, 5)  # version 6: a writer's append in between
    before = overlaps("repaired")
    caplog.set_level(logging.ERROR, logger="trapline.pipelines.compaction")

    merged = optimize(later, BrokenLease())  # version 7 merges all four; repair at 8

    assert (merged.version, merged.repaired_at) == (7, 8)
    assert overlaps("repaired") == before + 1
    assert "rewrote 3 files that another commit since version 4 also removed" in caplog.text
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert sorted(ids) == [f"m{i:05d}" for i in range(25)]  # each once
    commit_photos(root, 25, 5)  # the table goes on as before
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert sorted(ids) == [f"m{i:05d}" for i in range(30)]
    assert delta.app_version(delta.open_table(root, "media"), "writer") == 29


def test_the_earlier_of_two_overlapping_optimizes_sees_no_overlap(tmp_path):
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    first, second = delta.open_table(root, "media"), delta.open_table(root, "media")
    assert optimize(first, BrokenLease()).repaired_at is None
    assert optimize(second, BrokenLease()).repaired_at is not None
    assert sorted(read_table(root, "media").column("media_id").to_pylist()) == [
        f"m{i:05d}" for i in range(15)
    ]


def test_the_repair_keeps_partition_values_that_need_escaping(tmp_path):
    path = str(tmp_path / "t")
    for i, camera in enumerate(["cam 1/a:b=%", "cam 2", "cam 1/a:b=%", "cam 2"]):
        write_deltalake(path, pa.table({"id": [i], "camera": [camera]}), partition_by=["camera"],
                        mode="append")  # fmt: skip
    earlier = DeltaTable(path)
    write_deltalake(path, pa.table({"id": [9], "camera": ["cam 1/a:b=%"]}),
                    partition_by=["camera"], mode="append")  # fmt: skip
    later = DeltaTable(path)
    earlier.optimize.compact()
    assert optimize(later, BrokenLease()).repaired_at is not None
    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    assert sorted((r["id"], r["camera"]) for r in rows) == [
        (0, "cam 1/a:b=%"), (1, "cam 2"), (2, "cam 1/a:b=%"), (3, "cam 2"), (9, "cam 1/a:b=%"),
    ]  # fmt: skip


def test_a_repair_is_refused_loudly_when_the_files_moved_since(tmp_path):
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    first, second = delta.open_table(root, "media"), delta.open_table(root, "media")
    first.optimize.compact()  # version 4
    second.optimize.compact()  # version 5: the overlap, not yet repaired
    commit_photos(root, 15, 5)
    delta.open_table(root, "media").optimize.compact()  # a third merges version 5's file away
    overlap = compaction.removed_by_others(compaction.location(second), 3, 5)
    assert len(overlap) == 3
    with pytest.raises(OverlapNotRepaired, match="changed since"):
        repair_overlap(compaction.location(second), 5, overlap)


def test_a_writers_compaction_never_raises_on_an_unrepairable_overlap(
    tmp_path, monkeypatch, caplog
):
    root = str(tmp_path)
    for batch in range(3):
        commit_photos(root, batch * 5, 5)

    def refuse(*_args: object) -> int:
        raise OverlapNotRepaired("files moved")

    monkeypatch.setattr(compaction, "repair_overlap", refuse)
    monkeypatch.setattr(compaction, "removed_by_others", lambda *_args: {"a-file"})
    before = overlaps("not_repaired")
    assert compaction.compact_when_free(delta.open_table(root, "media")) is None
    assert overlaps("not_repaired") == before + 1
    assert "merging small files failed" in caplog.text and "files moved" in caplog.text
    assert CompactionLease(root).read().held is False  # released all the same
