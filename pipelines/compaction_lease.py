"""The compaction lease: one compactor at a time per results root.

Why: deltalake 1.6.4 to 1.6.6 let two OPTIMIZE commits that remove the same files both succeed,
and every row they both rewrote is then read twice by every reader (Delta's protocol, and
deltalake 1.6.3, refuse that as a delete-delete conflict; docs/delta-rs-concurrent-optimize.md).
So no OPTIMIZE runs without this lease (`pipelines/compaction.py`), whoever runs it: a writer
every 50 versions, `trapline compact`, the Helm CronJob.

How: the lease lives on the tables' own storage as a Delta table with no rows,
`ROOT/_compaction_lease/`. Each take, renewal and release is one empty commit carrying the
application transaction (`LEASE_APP_ID`, epoch + 1) and, as custom commit metadata, the holder,
when the lease expires (UTC) and whether it is held or released. delta-rs refuses a commit when
a commit since its snapshot carried the same app id (the check that fences the stream's zombies,
services/run/delta_sink.py), so a commit is a compare-and-swap on the epoch: of two takers
that read epoch N, one commits N + 1 and the other gets `CommitFailedError`, read as "someone
else took it" (pinned in tests/unit/test_delta_rs_behaviour.py). It needs nothing a commit does
not need already: a hard link on a local disk, a conditional put on S3 (`conditional_put=etag`,
`delta.storage_options`; checked on Ceph RGW, tests/integration/test_compaction_lease_s3.py).

Expiry: a holder that dies blocks compaction for at most `ttl` (10 minutes by default). Expiry
compares the holder's clock, which wrote `expires_at`, with the taker's: the machines' clocks must
agree to well within the TTL (NTP). A holder renews before each OPTIMIZE when less than half the
TTL is left and starts none if it cannot renew. An OPTIMIZE that outlives its lease, or a clock
that lies, is what the check after each OPTIMIZE is for (pipelines/compaction.py).

The state comes from the JSON commit that made the snapshot's version, not from delta-rs's
`history()`: on a snapshot that is not the latest, 1.6.6's `history(1)` returns the latest
commits, labelled with the snapshot's version numbers. The lease's log is checkpointed every 10
commits and keeps one hour (writers take the lease a few thousand times a day), so opening it
stays cheap; an expired lease whose commit was cleaned up is free anyway (1 hour > TTL).

Why not a plain lease object: renewing it would need a conditional overwrite (If-Match), one
more store feature to check on every S3-compatible store; a Delta commit needs only what every
table commit needs already (create-if-absent), so the lease works wherever the tables do.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from trapline.pipelines import delta, delta_txn  # delta first: it sets delta-rs's allocator up

log = logging.getLogger(__name__)

LEASE_TABLE = "_compaction_lease"  # ROOT/_compaction_lease/, beside the result tables
LEASE_APP_ID = "trapline-compaction-lease"  # its epoch is this app id's transaction version
DEFAULT_TTL = timedelta(minutes=10)  # a dead holder blocks compaction at most this long
HOLDER, EXPIRES_AT, STATE = (
    "trapline.lease.holder",
    "trapline.lease.expiresAt",
    "trapline.lease.state",
)
_SCHEMA = pa.schema([("unused", pa.string())])  # Delta wants a column; no row is ever written
_CONFIGURATION = {
    "delta.checkpointInterval": "10",
    "delta.logRetentionDuration": "interval 1 hours",
}
_AFTER_COMMIT = delta.PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=True)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def holder_id(role: str) -> str:
    """Who holds the lease, as an operator reads it: role, host, process, and a token that
    tells two leases of one process apart."""
    return f"{role} on {socket.gethostname()} (pid {os.getpid()}, {uuid.uuid4().hex[:8]})"


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The lease as its last commit left it."""

    epoch: int  # commits made on the lease so far (0: never taken)
    holder: str | None
    expires_at: datetime | None  # UTC, by the holder's clock
    held: bool  # False once released (or never taken)

    def holds(self, now: datetime) -> bool:
        """Whether someone holds it at `now` (held and not expired)."""
        return self.held and self.expires_at is not None and now < self.expires_at


class LeaseHeld(Exception):
    """Another compactor holds the lease."""

    def __init__(self, root: str, state: LeaseState, now: datetime) -> None:
        self.holder = state.holder or "an unknown holder"
        self.expires_at = state.expires_at
        if state.expires_at is not None:
            left = max(0, round((state.expires_at - now).total_seconds()))
            until = f"until {state.expires_at:%Y-%m-%d %H:%M:%S} UTC ({left} s from now)"
        else:
            until = "(no expiry recorded)"
        super().__init__(f"the compaction lease on {root} is held by {self.holder} {until}")


class LeaseLost(Exception):
    """Our lease expired and someone else took it (or could not be renewed)."""


class CompactionLease:
    """One holder's handle on `ROOT/_compaction_lease/`: take, renew, release (a context
    manager takes and releases). Not shared between threads: each compactor makes its own."""

    def __init__(
        self,
        root: str,
        holder: str | None = None,
        ttl: timedelta = DEFAULT_TTL,
        clock: Clock = utc_now,
    ) -> None:
        self.root = root
        self.holder = holder or holder_id("compactor")
        self.ttl = ttl
        self.clock = clock
        self.uri = delta.table_uri(root, LEASE_TABLE)
        self._epoch: int | None = None  # the epoch we committed last, while we hold it
        self._expires_at: datetime | None = None

    # -- reading

    def read(self) -> LeaseState:
        """The lease's current state."""
        return self._snapshot()[1]

    @property
    def held(self) -> bool:
        """Whether we hold it, by our last commit and our clock (not re-read)."""
        return self._epoch is not None and self.time_left() > timedelta(0)

    def time_left(self) -> timedelta:
        if self._expires_at is None:
            return timedelta(0)
        return self._expires_at - self.clock()

    # -- writing

    def take(self, wait: timedelta = timedelta(0), poll_s: float = 5.0) -> None:
        """Take the lease, or raise `LeaseHeld` naming the holder (after waiting up to `wait`
        for it to be released or to expire)."""
        deadline = time.monotonic() + wait.total_seconds()
        while True:
            try:
                self._take_once()
                return
            except LeaseHeld as held:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                if held.expires_at is not None:  # no longer than until it expires
                    expiry = (held.expires_at - self.clock()).total_seconds()
                    left = min(left, max(0.05, expiry))
                time.sleep(min(poll_s, left))

    def renew(self) -> None:
        """Push our expiry to now + TTL; `LeaseLost` if someone else took it meanwhile."""
        self._commit_as_holder(held=True)

    def ensure(self, min_left: timedelta | None = None) -> None:
        """Renew when less than `min_left` (half the TTL) is left: what a holder calls before
        starting an OPTIMIZE, so that it starts none it may not finish under the lease."""
        if self.time_left() < (self.ttl / 2 if min_left is None else min_left):
            self.renew()

    def release(self) -> None:
        """Give the lease up (it expires by itself if this fails: logged, not raised)."""
        if self._epoch is None:
            return
        try:
            self._commit_as_holder(held=False)
        except (LeaseLost, RuntimeError, *delta.STORAGE_ERRORS) as error:
            log.warning(
                "%s: compaction lease not released (%s); it expires by itself", self.uri, error
            )
        finally:
            self._epoch = self._expires_at = None

    def __enter__(self) -> CompactionLease:
        self.take()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- the compare-and-swap

    def _take_once(self) -> None:
        table, state = self._snapshot()
        now = self.clock()
        if state.holds(now) and state.holder != self.holder:
            raise LeaseHeld(self.root, state, now)
        try:
            self._commit(table, state.epoch + 1, held=True)
        except delta.CommitFailedError:  # another taker committed since our snapshot
            raise LeaseHeld(self.root, self.read(), self.clock()) from None

    def _commit_as_holder(self, held: bool) -> None:
        if self._epoch is None:
            raise LeaseLost(f"{self.uri}: not held by {self.holder}")
        table, state = self._snapshot()
        if state.epoch != self._epoch or state.holder != self.holder:
            ours, self._epoch, self._expires_at = self._epoch, None, None
            raise LeaseLost(
                f"{self.uri}: the compaction lease was taken by {state.holder} (epoch "
                f"{state.epoch}; ours was {ours}) after ours expired"
            )
        try:
            self._commit(table, state.epoch + 1, held=held)
        except delta.CommitFailedError:
            self._epoch = self._expires_at = None
            raise LeaseLost(f"{self.uri}: the compaction lease was taken meanwhile") from None

    def _commit(self, table: delta.DeltaTable, epoch: int, held: bool) -> None:
        now = self.clock()
        expires_at = now + self.ttl if held else now
        delta.write_deltalake(
            table,
            _SCHEMA.empty_table(),
            mode="append",
            commit_properties=delta.CommitProperties(
                app_transactions=[delta.Transaction(LEASE_APP_ID, epoch)],
                custom_metadata={
                    HOLDER: self.holder,
                    EXPIRES_AT: expires_at.isoformat(timespec="milliseconds"),
                    STATE: "held" if held else "released",
                },
            ),
            post_commithook_properties=_AFTER_COMMIT,
        )
        self._epoch, self._expires_at = (epoch, expires_at) if held else (None, None)

    def _snapshot(self) -> tuple[delta.DeltaTable, LeaseState]:
        """The lease table at its latest version, and the state its last commit recorded."""
        for _attempt in range(5):
            table = self._open()
            epoch = table.transaction_version(LEASE_APP_ID) or 0
            if epoch == 0:
                return table, LeaseState(0, None, None, held=False)
            version = table.version()
            commit = delta_txn.read_commits(self.uri, range(version, version + 1)).get(version)
            if commit is None:  # cleaned up after a newer checkpoint: we read a stale version
                continue
            info = next((a["commitInfo"] for a in commit if "commitInfo" in a), {})
            expires = info.get(EXPIRES_AT)
            return table, LeaseState(
                epoch,
                info.get(HOLDER),
                datetime.fromisoformat(expires) if expires else None,
                held=info.get(STATE) == "held",
            )
        raise RuntimeError(f"{self.uri}: cannot read the compaction lease's last commit")

    def _open(self) -> delta.DeltaTable:
        options = delta.storage_options(self.uri)
        for _attempt in range(5):
            try:
                return delta.DeltaTable(self.uri, storage_options=options)
            except delta.TableNotFoundError:
                pass
            if "://" not in self.uri:
                os.makedirs(self.uri, exist_ok=True)
            try:
                return delta.DeltaTable.create(
                    self.uri,
                    _SCHEMA,
                    mode="ignore",
                    name=LEASE_TABLE,
                    description="Trapline's compaction lease (pipelines/compaction_lease.py)",
                    configuration=_CONFIGURATION,
                    storage_options=options,
                )
            except delta.DeltaError as error:  # lost the race for version 0: the winner's is there
                log.info("%s: created concurrently (%s); opening it", self.uri, error)
                time.sleep(0.1)
        raise RuntimeError(f"{self.uri}: cannot create or open the compaction lease")
