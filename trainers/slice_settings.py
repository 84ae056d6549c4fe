"""A project's slicing (the `slice` and `slice_overlap` settings), read on every detector call.

`labelpilot settings cvat-task-5 --slice 640 --slice-overlap 0.2` makes CVAT's detector for
that key run sliced (backends/slicing.py) and its training use tiles. Like `ProjectBands`,
each key's value is kept a few seconds in the process: one Redis read per key and TTL.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from labelpilot.backends.slicing import SliceSpec
from labelpilot.trainers.settings import load_params

log = logging.getLogger(__name__)
CACHE_SECONDS = 5.0


def load_slicing(connection: redis.Redis, project: str) -> SliceSpec | None:
    """The key's slicing; None when it is off (slice 0, the default)."""
    params = load_params(connection, project)
    return SliceSpec(params.slice, params.slice_overlap) if params.slice else None


class ProjectSlicing:
    """Keys' slicing, each cached for `ttl` seconds (thread-safe). A Redis outage or a bad
    stored value means no slicing, logged: detection must go on."""

    def __init__(self, connection: redis.Redis, ttl: float = CACHE_SECONDS):
        self.connection = connection
        self.ttl = ttl
        self._cache: dict[str, tuple[float, SliceSpec | None]] = {}
        self._lock = threading.Lock()

    def get(self, project: str) -> SliceSpec | None:
        now = time.monotonic()
        with self._lock:
            known = self._cache.get(project)
        if known is not None and now - known[0] < self.ttl:
            return known[1]
        try:
            spec = load_slicing(self.connection, project)
        except (redis.RedisError, ValueError) as exc:
            log.warning("slicing of %s unavailable, not slicing: %s", project, exc)
            spec = None
        with self._lock:
            self._cache[project] = (now, spec)
        return spec
