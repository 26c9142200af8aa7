"""The compaction lease and the check after OPTIMIZE on S3 (the real Ceph RGW): the lease's
compare-and-swap is a Delta commit, which on S3 rests on conditional put (`conditional_put=etag`,
pipelines/delta.py), and its state and the overlap check read JSON commits through s3fs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from support.compaction_race import race
from support.delta_commits import commit_photos

from trapline.pipelines import delta
from trapline.pipelines.compaction import optimize
from trapline.pipelines.compaction_lease import CompactionLease, LeaseHeld, LeaseLost
from trapline.pipelines.readers import read_table

pytest_plugins = ["support.s3_fixtures"]


class BrokenLease:
    def ensure(self) -> None:
        pass


def test_the_lease_on_s3_refuses_a_second_holder_and_expires(s3, s3_bucket):
    root = f"s3://{s3_bucket('lease')}/results"
    now = datetime.now(timezone.utc)
    first = CompactionLease(root, "writer on worker-0", clock=lambda: now)
    first.take()
    with pytest.raises(LeaseHeld, match="held by writer on worker-0 until"):
        CompactionLease(root, "trapline compact", clock=lambda: now).take()
    later = now + timedelta(minutes=11)
    CompactionLease(root, "trapline compact", clock=lambda: later).take()
    with pytest.raises(LeaseLost):
        first.renew()
    assert CompactionLease(root).read().holder == "trapline compact"
    assert not [k for k in s3.find(root) if k.endswith(".parquet") and "_delta_log" not in k]


def test_processes_taking_the_lease_on_s3_at_the_same_moment_exactly_one_wins(
    s3, s3_bucket, s3_settings
):
    root = f"s3://{s3_bucket('lease-race')}/results"
    CompactionLease(root).read()  # the lease's table exists: the race is on the epoch
    outcomes = race(root, 4, s3=vars(s3_settings))
    winners = [holder for holder, outcome in outcomes.items() if outcome == "took"]
    assert len(winners) == 1, outcomes
    assert all(o == f"held by {winners[0]}" for h, o in outcomes.items() if h != winners[0])
    assert CompactionLease(root).read().holder == winners[0]


def test_an_overlapping_optimize_on_s3_is_repaired(s3, s3_bucket):
    root = f"s3://{s3_bucket('overlap')}/results"
    for batch in range(3):
        commit_photos(root, batch * 5, 5)
    earlier, later = delta.open_table(root, "media"), delta.open_table(root, "media")
    earlier.optimize.compact()
    commit_photos(root, 15, 5)
    merged = optimize(later, BrokenLease())
    assert merged.repaired_at is not None
    ids = read_table(root, "media").column("media_id").to_pylist()
    assert sorted(ids) == [f"m{i:05d}" for i in range(20)]
