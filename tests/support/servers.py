"""Fixtures that start real servers once per test session.

Import them into a test module or conftest.py:

    from tests.servers import kafka_consumer, kafka_topic, tansu  # noqa: F401

Tansu keeps everything in memory and is shared by the whole session, so each test takes fresh
topic names (`kafka_topic`) and group ids instead of relying on an empty broker.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from trapline.services.adapters import kafka_io
from trapline.services.devstack.tansu import TansuServer, start_tansu

# Tansu assigns partitions to a new group only after half the first member's session timeout;
# 6 s (the lowest Kafka's default broker settings allow) makes that a 3 s wait.
TEST_SESSION_TIMEOUT_MS = 6000


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuServer]:
    """A Tansu broker (memory storage) on a free loopback port, for the whole session."""
    with start_tansu() as server:
        yield server


@pytest.fixture
def kafka_topic(tansu: TansuServer) -> Callable[..., str]:
    """Factory: `kafka_topic("uploads", partitions=3)` creates and returns a unique topic name."""
    counter = itertools.count()
    run = uuid.uuid4().hex[:8]

    def make(prefix: str = "test", partitions: int = 3) -> str:
        name = f"{prefix}.{run}.{next(counter)}"
        kafka_io.ensure_topics(tansu.bootstrap, [name], partitions)
        return name

    return make


@pytest.fixture
def kafka_consumer(tansu: TansuServer) -> Iterator[Callable[..., Any]]:
    """Factory: `kafka_consumer([topic])` is a group consumer (fresh group id unless given) with
    the test session timeout; closed after the test."""
    consumers: list[Any] = []

    def make(topics: list[str], group_id: str | None = None, **options: Any) -> Any:
        options.setdefault("session_timeout_ms", TEST_SESSION_TIMEOUT_MS)
        group = group_id or f"test-group-{uuid.uuid4().hex[:8]}"
        consumer = kafka_io.make_consumer(tansu.bootstrap, group, topics, **options)
        consumers.append(consumer)
        return consumer

    yield make
    for consumer in consumers:
        consumer.close()
