"""A project's band mapping (the `bands` and `stretch` settings), read for every image path.

Prediction decodes many images per second: `ProjectBands` keeps each project's mapping for a
few seconds in the process, so a request costs at most one Redis read per project and TTL,
never one per image. A change made with `labelpilot settings` reaches every worker within it.
"""

from __future__ import annotations

import redis

from labelpilot.backends.bands import BandMapping
from labelpilot.trainers.cached_setting import CACHE_SECONDS, CachedSetting
from labelpilot.trainers.settings import load_params


def load_band_mapping(connection: redis.Redis, project: str) -> BandMapping | None:
    """The project's mapping; None when it is the default (bands 1-3, stretch 2,98)."""
    params = load_params(connection, project)
    mapping = BandMapping.parse(params.bands, params.stretch)
    return None if mapping.is_auto else mapping


class ProjectBands(CachedSetting[BandMapping]):
    """Projects' band mappings, each cached for `ttl` seconds (thread-safe). A Redis outage
    or a bad stored value gives the default mapping, logged: prediction must go on."""

    def __init__(self, connection: redis.Redis, ttl: float = CACHE_SECONDS):
        super().__init__(connection, load_band_mapping, "band mapping", "using the default",
                         ttl=ttl)
