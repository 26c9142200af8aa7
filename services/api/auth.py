"""Who is calling and how often: bearer tokens per program, a token bucket per token, and one
per client address for wrong tokens (guessing is slowed to `failed_auth_per_s`).

Tokens are checked against the registry's sha256 hashes with `hmac.compare_digest`. A program's
record is re-read at most every `cache_s` seconds, so a token added with `trapline api add-token`
works within that time on a running server, and a revoked one stops working within it.
Rate limits are per replica: with N Ray Serve replicas a token gets up to N times the rate.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from trapline.services.api.registry import Registry


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket: `burst` requests at once, refilled at `rate` per second.

    At most `max_keys` buckets are kept: past it, the full ones (equal to a new bucket) are
    dropped, so keys an attacker makes up (client addresses) cannot grow memory without bound.
    """

    def __init__(self, rate: float, burst: int, clock=time.monotonic, max_keys: int = 100_000):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until one may (Retry-After)."""
        with self._lock:
            bucket = self._refill(key)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate

    def wait(self, key: str) -> float:
        """Like `take`, but takes nothing: 0 while `key` has a request left."""
        with self._lock:
            if key not in self._buckets:  # never limited: no bucket made for it
                return 0.0
            bucket = self._refill(key)
            return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def _refill(self, key: str) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def _forget_full(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]


class Authenticator:
    """Bearer token -> program, with a short cache of positive answers (keyed by hash)."""

    def __init__(self, registry: Registry, cache_s: float = 30.0):
        self.registry = registry
        self.cache_s = cache_s
        self._known: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def program(self, token: str) -> str | None:
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._known.get(key)
        if hit is not None and now - hit[1] < self.cache_s:
            return hit[0]
        program = self.registry.authenticate(token)
        if program is not None:
            with self._lock:
                self._known[key] = (program, now)
        return program
