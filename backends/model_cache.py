"""Process-wide cache of loaded models: each model loads once, concurrent callers wait for it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ModelCache(Generic[T]):
    """LRU of at most `capacity` loaded models, keyed by resolved reference."""

    def __init__(self, loader: Callable[[str], T], capacity: int = 4):
        self._loader = loader
        self._capacity = max(1, capacity)
        self._models: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str) -> T:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one load per key; others wait and then find it cached
            with self._lock:
                if key in self._models:
                    return self._models[key]
            model = self._loader(key)
            with self._lock:
                self._models[key] = model
                self._models.move_to_end(key)
                while len(self._models) > self._capacity:
                    self._models.popitem(last=False)
                self._loading.pop(key, None)
            return model

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)
