"""A per-project setting read on a hot path (every image, every detector call), kept a few
seconds in the process: one Redis read per project and TTL, never one per image; a change made
with `labelpilot settings` reaches every worker within the TTL."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import redis

log = logging.getLogger(__name__)
CACHE_SECONDS = 5.0
T = TypeVar("T")


class CachedSetting(Generic[T]):
    """`load(connection, project)` per project, each value kept `ttl` seconds (thread-safe;
    at most `capacity` projects). A Redis outage or a bad stored value (ValueError) gives
    None, logged with `fallback` (what happens then): the hot path must go on."""

    def __init__(self, connection: redis.Redis, load: Callable[[redis.Redis, str], T | None],
                 what: str, fallback: str, *, ttl: float = CACHE_SECONDS, capacity: int = 1024):
        self.connection = connection
        self.ttl = ttl
        self._load = load
        self._what = what
        self._fallback = fallback
        self._capacity = max(1, capacity)
        self._cache: OrderedDict[str, tuple[float, T | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, project: str) -> T | None:
        now = time.monotonic()
        with self._lock:
            known = self._cache.get(project)
        if known is not None and now - known[0] < self.ttl:
            return known[1]
        try:
            value = self._load(self.connection, project)
        except (redis.RedisError, ValueError) as exc:
            log.warning("%s of %s unavailable, %s: %s", self._what, project, self._fallback, exc)
            value = None
        with self._lock:
            self._cache[project] = (now, value)
            self._cache.move_to_end(project)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return value
