"""The Redis connection: REDIS_URL, with short timeouts so a dead Redis fails fast."""

from __future__ import annotations

from functools import cache

import redis

from labelpilot.settings import Settings, load_settings

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url(settings: Settings) -> str:
    """REDIS_URL, else the embedded Redis that `labelpilot serve` started in the data dir."""
    if settings.redis_url:
        return settings.redis_url
    recorded = settings.resolved_data_dir / "redis" / "url"
    return recorded.read_text().strip() if recorded.exists() else DEFAULT_URL


def connect_url(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0,
                                health_check_interval=30)


def connect(settings: Settings) -> redis.Redis:
    """A client for the configured Redis (clients are thread-safe connection pools)."""
    return connect_url(redis_url(settings))


@cache
def get_redis() -> redis.Redis:
    """The CLI's connection (one per process), from the environment's settings."""
    return connect(load_settings())
