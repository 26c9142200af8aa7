"""Fixtures the unit tests share: the stream worker's pipeline and in-memory uploads."""

from support.memory_workers import pipeline, uploads  # noqa: F401  (fixtures)
