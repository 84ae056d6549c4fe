"""A byte-capped LRU cache that computes each missing key once, however many threads ask.

Built for SAM image embeddings: the encoder is the expensive part (seconds on a CPU), so the
first caller for a key computes it and concurrent callers for the same key wait for that one
result (a per-key future) instead of running the encoder again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int  # callers that found nothing (they computed it, or waited for who did)
    computes: int  # times `compute` actually ran
    evictions: int
    entries: int
    bytes: int
    max_bytes: int


class EmbeddingCache(Generic[V]):
    """Thread-safe; `size_of(value)` gives a value's bytes, counted against `max_bytes`."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]):
        self.max_bytes = max(0, int(max_bytes))
        self._size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._pending: dict[Hashable, Future[V]] = {}
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._computes = self._evictions = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> tuple[V, bool]:
        """(value, hit). On a miss, exactly one caller runs `compute`; errors reach every waiter
        and are not cached."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self._hits += 1
                return item[0], True
            self._misses += 1
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = Future()
                self._computes += 1
        if not owner:
            return pending.result(), False
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                self._pending.pop(key, None)
            pending.set_exception(exc)
            raise
        with self._lock:
            self._store(key, value)
            self._pending.pop(key, None)
        pending.set_result(value)
        return value, False

    def _store(self, key: Hashable, value: V) -> None:
        size = int(self._size_of(value))
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if size > self.max_bytes:
            return  # larger than the whole cache: hand it out, keep nothing
        self._items[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and self._items:
            _, (_, evicted) = self._items.popitem(last=False)
            self._bytes -= evicted
            self._evictions += 1

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._computes, self._evictions,
                              len(self._items), self._bytes, self.max_bytes)
