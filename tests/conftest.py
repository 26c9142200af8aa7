"""Shared fixtures: small real photos made with Pillow, in memory or on disk."""

from __future__ import annotations

import pytest
from support.photo_factory import jpeg_bytes
from support.servers import kafka_consumer, kafka_topic, tansu  # noqa: F401  (tests/ is on sys.path)


@pytest.fixture
def make_jpeg():
    return jpeg_bytes
