"""A project's slicing (the `slice` and `slice_overlap` settings), read on every detector call.

`labelpilot settings cvat-task-5 --slice 640 --slice-overlap 0.2` makes CVAT's detector for
that key run sliced (backends/slicing.py) and its training use tiles. Like `ProjectBands`,
each key's value is kept a few seconds in the process: one Redis read per key and TTL.
"""

from __future__ import annotations

import redis

from labelpilot.backends.slicing import SliceSpec
from labelpilot.trainers.cached_setting import CACHE_SECONDS, CachedSetting
from labelpilot.trainers.settings import load_params


def load_slicing(connection: redis.Redis, project: str) -> SliceSpec | None:
    """The key's slicing; None when it is off (slice 0, the default)."""
    params = load_params(connection, project)
    return SliceSpec(params.slice, params.slice_overlap) if params.slice else None


class ProjectSlicing(CachedSetting[SliceSpec]):
    """Keys' slicing, each cached for `ttl` seconds (thread-safe). A Redis outage or a bad
    stored value means no slicing, logged: detection must go on."""

    def __init__(self, connection: redis.Redis, ttl: float = CACHE_SECONDS):
        super().__init__(connection, load_slicing, "slicing", "not slicing", ttl=ttl)
