"""The one Redis connection settings: REDIS_URL, with short timeouts so a dead Redis fails fast."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """REDIS_URL, else the embedded Redis that `labelpilot serve` started in the data dir."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    data = Path(os.environ.get("LABELPILOT_DATA_DIR", ".data"))
    recorded = data / "redis" / "url"
    return recorded.read_text().strip() if recorded.exists() else DEFAULT_URL


def as_text(value: bytes | str) -> str:
    """A Redis reply as str (clients without decode_responses give bytes)."""
    return value.decode() if isinstance(value, bytes) else value


@cache
def get_redis(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url or redis_url(), socket_connect_timeout=0.5,
                                socket_timeout=2.0, health_check_interval=30)
