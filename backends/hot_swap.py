"""Which store version each serving process uses, switched without blocking requests.

A daemon thread listens on the model-updates channel (and polls as a fallback for missed
messages); on a change it loads the new weights through the model cache first and only then
swaps the in-memory pointer. Requests read the pointer and never wait for a load.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable

import redis

from labelpilot.backends.model_store import UPDATES_CHANNEL, ModelStore, ModelVersion

log = logging.getLogger(__name__)
_LISTENING: weakref.WeakSet[CurrentModels] = weakref.WeakSet()  # for `stop_all`
RECONNECT_SECONDS = 0.5  # wait before subscribing again after the connection to Redis failed


class CurrentModels:
    def __init__(self, store: ModelStore, preload: Callable[[str], object],
                 poll_seconds: float = 5.0):
        self.store = store
        self._preload = preload
        self._poll = poll_seconds
        self._current: dict[str, ModelVersion | None] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._loading = threading.Event()  # a load runs on the listener thread
        _LISTENING.add(self)

    def get(self, key: str) -> ModelVersion | None:
        """The version in use for `key` here; the first call per key reads the pointer."""
        with self._lock:
            if key in self._current:
                return self._current[key]
        version = self.store.current(key)
        with self._lock:
            self._current.setdefault(key, version)
            return self._current[key]

    def refresh(self, key: str) -> bool:
        """Load and switch to the store's current version of `key`; True if it changed."""
        if self._stopped.is_set():
            return False
        latest = self.store.current(key)
        with self._lock:
            known = self._current.get(key)
        if latest is None or (known is not None and known.version == latest.version):
            return False
        self._loading.set()
        try:
            self._preload(str(latest.weights))  # slow part, outside the lock
        finally:
            self._loading.clear()
        with self._lock:
            self._current[key] = latest
        log.info("now serving %s", latest.model_version)
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-updates", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening; waits for a load in progress (a process that exits while a daemon
        thread is inside torch can abort)."""
        self._stopped.set()
        if self._thread is not None and self._loading.is_set():
            self._thread.join(timeout)  # otherwise it ends within a poll, loading nothing

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._listen()
            except redis.RedisError as exc:
                log.debug("model-updates listener: %s; retrying", exc)
            except Exception:
                log.exception("model-updates listener failed; retrying")
            # Redis restarting (or failing over) is back within a second or two: reconnect
            # soon, so a promotion made just after it is not left to the slow poll
            self._stopped.wait(min(self._poll, RECONNECT_SECONDS))

    def _catch_up(self) -> None:
        """Switch to what was promoted while no message could arrive (disconnected)."""
        with self._lock:
            keys = list(self._current)
        for key in keys:
            self.refresh(key)

    def _listen(self) -> None:
        pubsub = self.store.connection.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(UPDATES_CHANNEL)
        try:
            self._catch_up()  # subscribed: from here on no promotion is missed
            while not self._stopped.is_set():
                message = pubsub.get_message(timeout=self._poll)
                if message and message.get("type") == "message":
                    key = json.loads(message["data"]).get("key")
                    if key:
                        self.refresh(key)
                else:
                    self._catch_up()  # fallback for messages missed all the same
        finally:
            pubsub.close()


def stop_all(timeout: float = 60.0) -> None:
    """Stop every listener of this process, waiting for loads in progress: before a process
    that made several apps (a test session) exits, as one inside torch can abort the exit."""
    for current in list(_LISTENING):
        current.stop(timeout)
