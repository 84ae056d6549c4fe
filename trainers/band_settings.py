"""A project's band mapping (the `bands` and `stretch` settings), read for every image path.

Prediction decodes many images per second: `ProjectBands` keeps each project's mapping for a
few seconds in the process, so a request costs at most one Redis read per project and TTL,
never one per image. A change made with `labelpilot settings` reaches every worker within it.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from labelpilot.backends.bands import BandMapping
from labelpilot.trainers.settings import load_params

log = logging.getLogger(__name__)
CACHE_SECONDS = 5.0


def load_band_mapping(connection: redis.Redis, project: str) -> BandMapping | None:
    """The project's mapping; None when it is the default (bands 1-3, stretch 2,98)."""
    params = load_params(connection, project)
    mapping = BandMapping.parse(params.bands, params.stretch)
    return None if mapping.is_auto else mapping


class ProjectBands:
    """Projects' band mappings, each cached for `ttl` seconds (thread-safe). A Redis outage
    or a bad stored value gives the default mapping, logged: prediction must go on."""

    def __init__(self, connection: redis.Redis, ttl: float = CACHE_SECONDS):
        self.connection = connection
        self.ttl = ttl
        self._cache: dict[str, tuple[float, BandMapping | None]] = {}
        self._lock = threading.Lock()

    def get(self, project: str) -> BandMapping | None:
        now = time.monotonic()
        with self._lock:
            known = self._cache.get(project)
        if known is not None and now - known[0] < self.ttl:
            return known[1]
        try:
            mapping = load_band_mapping(self.connection, project)
        except (redis.RedisError, ValueError) as exc:
            log.warning("band mapping of %s unavailable, using the default: %s", project, exc)
            mapping = None
        with self._lock:
            self._cache[project] = (now, mapping)
        return mapping
