"""Second cache tier: embeddings in Redis, so all gunicorn workers (and hosts) share one encode.

The in-process LRU is per worker; a task prewarmed by worker A would be a miss on worker B
without this. An encode in progress is announced with a short lock key, so a click that lands on
another worker waits for that encode instead of running a second one on the same CPU. Redis
trouble never fails a click: the store then behaves as empty. The composition layer creates
one per process, on its Redis connection, when LABELPILOT_SAM_REDIS_TTL > 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np
import redis

from labelpilot.backends.sam.transforms import Frame

if TYPE_CHECKING:  # imported where an embedding is made: a worker without SAM never needs it
    import torch

log = logging.getLogger(__name__)
_PREFIX = "labelpilot:sam:emb:"
_INDEX = "labelpilot:sam:emb-index"  # sorted set: embedding key → when it was stored
EMBEDDING_MB = 4  # float32 1 x 256 x 64 x 64


class RedisEmbeddingStore:
    """Embeddings in Redis for `ttl` seconds, the oldest dropped beyond `max_mb` in all
    (LABELPILOT_SAM_REDIS_TTL and LABELPILOT_SAM_REDIS_MB; 1024 MB is 256 images)."""

    def __init__(self, client: redis.Redis, ttl: int = 1800, lock_ttl: int = 120,
                 max_mb: int = 1024):
        self.client = client
        self.ttl = ttl
        self.lock_ttl = lock_ttl
        self.max_entries = max(1, max_mb // EMBEDDING_MB)

    @staticmethod
    def _key(key: tuple[str, str]) -> str:
        digest, version = key
        return f"{_PREFIX}{version}:{digest}"

    def get(self, key: tuple[str, str]) -> tuple[torch.Tensor, Frame] | None:
        try:
            raw = self.client.get(self._key(key))
        except redis.RedisError as exc:
            log.warning("SAM embedding store unavailable: %s", exc)
            return None
        if not isinstance(raw, bytes) or not raw:
            return None
        header_len = int.from_bytes(raw[:4], "little")
        header = json.loads(raw[4:4 + header_len])
        array = np.frombuffer(raw[4 + header_len:], dtype=np.float32).reshape(header["shape"])
        import torch

        return torch.from_numpy(array.copy()), Frame(*header["frame"])

    def put(self, key: tuple[str, str], tensor: torch.Tensor, frame: Frame) -> None:
        array = tensor.detach().float().cpu().numpy()
        header = json.dumps({"shape": list(array.shape), "frame": [
            frame.height, frame.width, frame.input_height, frame.input_width]}).encode()
        payload = len(header).to_bytes(4, "little") + header + array.tobytes()
        name = self._key(key)
        try:
            pipe = self.client.pipeline()
            pipe.set(name, payload, ex=self.ttl)
            pipe.zadd(_INDEX, {name: time.time()})
            pipe.zremrangebyscore(_INDEX, "-inf", time.time() - self.ttl)  # expired anyway
            pipe.zcard(_INDEX)
            count = pipe.execute()[-1]
            if count > self.max_entries:  # keep Redis' memory bounded: drop the oldest
                oldest: list[tuple[bytes, float]] = self.client.zpopmin(  # type: ignore[assignment]
                    _INDEX, count - self.max_entries)
                if oldest:
                    self.client.delete(*[member for member, _score in oldest])
        except redis.RedisError as exc:
            log.warning("SAM embedding not shared (Redis): %s", exc)

    def claim(self, key: tuple[str, str]) -> bool:
        """True when this caller should encode (nobody else is encoding this key)."""
        try:
            return bool(self.client.set(self._key(key) + ":encoding", os.getpid(), nx=True,
                                        ex=self.lock_ttl))
        except redis.RedisError:
            return True

    def release(self, key: tuple[str, str]) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self._key(key) + ":encoding")

    def wait(self, key: tuple[str, str], timeout: float) -> tuple[torch.Tensor, Frame] | None:
        """The embedding another worker is encoding, once it is there (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.get(key)
            if found is not None:
                return found
            try:
                if not self.client.exists(self._key(key) + ":encoding"):
                    return self.get(key)
            except redis.RedisError:
                return None
            time.sleep(0.05)
        return None
