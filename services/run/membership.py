"""Which partitions a stream worker reads: the consumer group's choice, or its own.

- dynamic membership (the default): the group assigns, and rebalances when a member comes or goes;
- static membership (`group_instance_id`): the same member id after a restart (`member_id`),
  so the group waits for it instead of rebalancing;
- `partition_assignment=ordinal`: no group protocol; worker slot i of N (from the pod's ordinal,
  `ordinal_slot`) reads the partitions p with p % N == i.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from trapline.services.settings import Settings


@dataclass(frozen=True)
class OrdinalSlot:
    """partition_assignment=ordinal: this consumer is slot `index` of `count` and owns the
    partitions p with p % count == index."""

    index: int
    count: int

    def owns(self, partition: int) -> bool:
        return partition % self.count == self.index


def ordinal_slot(settings: Settings, index: int, hostname: str | None = None) -> OrdinalSlot | None:
    """Worker `index` of this process under ordinal assignment (None: the group assigns).

    The process's ordinal is `worker_ordinal`, or the number ending the host name (a StatefulSet
    pod `trapline-worker-3` is 3); its `workers` consumers (at least one) take consecutive slots.
    Raises ValueError at start when the ordinal is unknown or not below `worker_replicas`:
    a wrong one would leave partitions to nobody.
    """
    if settings.partition_assignment != "ordinal":
        return None
    ordinal = settings.worker_ordinal
    if ordinal is None:
        host = hostname if hostname is not None else socket.gethostname()
        match = re.search(r"-(\d+)$", host)
        if match is None:
            raise ValueError(
                "partition_assignment=ordinal needs TRAPLINE_WORKER_ORDINAL or a host name "
                f"ending in -N (a StatefulSet pod's); this host is {host!r}"
            )
        ordinal = int(match[1])
    if ordinal >= settings.worker_replicas:
        raise ValueError(
            f"worker ordinal {ordinal} is not below worker_replicas={settings.worker_replicas}: "
            "set TRAPLINE_WORKER_REPLICAS to the number of worker processes (pods)"
        )
    per_process = max(settings.workers, 1)
    return OrdinalSlot(ordinal * per_process + index, settings.worker_replicas * per_process)


def member_id(settings: Settings, index: int) -> str | None:
    """The static group member id of worker `index`: `<group_instance_id>-<index>`, the same
    after every restart of this process, different for each of its workers; None (dynamic
    membership) when `group_instance_id` is unset."""
    if settings.group_instance_id is None:
        return None
    return f"{settings.group_instance_id}-{index}"
