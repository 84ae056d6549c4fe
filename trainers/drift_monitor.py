"""Watch /predict for drift: a window of recent images per served version, tested in the
background against the version's reference; a drift raises a retraining request.

Per image the observer keeps one row (image statistics, pooled backbone features, confidence)
in a bounded Redis list per model key and version, shared by every serving process. The
process whose images complete a window runs the test on a short daemon thread, so no request
waits for it, and records the result (`drift_status`). Versions without a reference (default
weights, versions written before references existed) are not watched.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from labelpilot.backends.drift import (
    STAT_NAMES,
    DriftSettings,
    Reference,
    compare,
    image_confidence,
    image_statistics,
)
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.observation import Observation
from labelpilot.backends.redis_text import as_text
from labelpilot.trainers.drift_reference import REFERENCE_FILE
from labelpilot.trainers.retraining import RetrainingRequests

log = logging.getLogger(__name__)
_WINDOW = "labelpilot:drift:{}:{}:window"  # model key, version → rows (float32, as hex text)
_SEEN = "labelpilot:drift:{}:{}:seen"  # images observed for that version
_STATUS = "labelpilot:drift:{}:status"  # model key → the last test (JSON)
_HISTORY = "labelpilot:drift:{}:history"  # model key → recent tests, newest first
HISTORY = 100
WINDOW_TTL_S = 30 * 86400


def drift_status(connection: redis.Redis, model_key: str) -> dict[str, Any] | None:
    """The last drift test of `model_key`'s served version: drifted, p_value, statistic,
    window, confidence_drop, reasons, model_version, at; None before the first one."""
    raw = connection.get(_STATUS.format(model_key))
    return dict(json.loads(raw)) if raw else None


def record_status(connection: redis.Redis, model_key: str, status: dict[str, Any]) -> None:
    """Keep `status` as the last test of `model_key` and in its bounded history."""
    text = json.dumps(status)
    pipe = connection.pipeline()
    pipe.set(_STATUS.format(model_key), text)
    pipe.lpush(_HISTORY.format(model_key), text)
    pipe.ltrim(_HISTORY.format(model_key), 0, HISTORY - 1)
    pipe.execute()


def drift_history(connection: redis.Redis, model_key: str, limit: int = 20) -> list[dict[str, Any]]:
    return [json.loads(r) for r in connection.lrange(_HISTORY.format(model_key), 0, limit - 1)]


class DriftObserver:
    """An `Observer` of /predict. `window`: images per test; `requests`: where a drift
    raises its retraining request (None: only logged and recorded); `background`: False runs
    the test inline (tests); `every`: keep one image in this many (1: all), for servers whose
    model is so fast that ~0.3 ms of statistics per image matters."""

    def __init__(
        self,
        connection: redis.Redis,
        store: ModelStore,
        *,
        window: int = 50,
        settings: DriftSettings | None = None,
        requests: RetrainingRequests | None = None,
        background: bool = True,
        every: int = 1,
    ):
        self.connection = connection
        self.store = store
        self.window = max(2, window)
        self.settings = settings or DriftSettings()
        self.requests = requests
        self.background = background
        self.every = max(1, every)
        self._count = 0
        self._references: dict[tuple[str, str], Reference | None] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def reference(self, model_key: str, version: str) -> Reference | None:
        """The version's reference, loaded once per process (versions never change)."""
        with self._lock:
            if (model_key, version) not in self._references:
                path = self.store.root / model_key / version / REFERENCE_FILE
                self._references[(model_key, version)] = _load(path)
            return self._references[(model_key, version)]

    def observe(self, batch: Sequence[Observation]) -> None:
        groups: dict[tuple[str, str], list[Observation]] = {}
        for observation in batch:
            if observation.model_key is None:
                continue  # default weights: no training images, no reference
            self._count += 1
            if self._count % self.every:
                continue
            version = observation.model_version.removeprefix(f"{observation.model_key}-")
            groups.setdefault((observation.model_key, version), []).append(observation)
        for (model_key, version), observations in groups.items():
            reference = self.reference(model_key, version)
            if reference is not None:
                self._append(model_key, version, reference, observations)

    def _append(
        self, model_key: str, version: str, reference: Reference, observations: list[Observation]
    ) -> None:
        width = reference.features.shape[1]
        rows = [_row(o, width) for o in observations]
        window_key, seen_key = _WINDOW.format(model_key, version), _SEEN.format(model_key, version)
        pipe = self.connection.pipeline()
        pipe.rpush(window_key, *rows)
        pipe.ltrim(window_key, -self.window, -1)
        pipe.incrby(seen_key, len(rows))
        pipe.expire(window_key, WINDOW_TTL_S)
        pipe.expire(seen_key, WINDOW_TTL_S)
        seen = int(pipe.execute()[2])
        if seen // self.window == (seen - len(rows)) // self.window:
            return  # no window completed by this batch
        first = observations[0]
        if self.background:
            thread = threading.Thread(
                target=self.test,
                name=f"drift-{model_key}",
                daemon=True,
                args=(first.project, model_key, version, first.model_version),
            )
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        else:
            self.test(first.project, model_key, version, first.model_version)

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the tests running in the background (tests, shutdown)."""
        for thread in list(self._threads):
            thread.join(timeout)

    def test(
        self, project: str, model_key: str, version: str, model_version: str
    ) -> dict[str, Any] | None:
        """Test the current window of `model_key` `version`; record and act on the result."""
        try:
            return self._test(project, model_key, version, model_version)
        except Exception:  # a background thread: nobody else would see it
            log.exception("drift test of %s %s failed", model_key, version)
            return None

    def _test(
        self, project: str, model_key: str, version: str, model_version: str
    ) -> dict[str, Any] | None:
        reference = self.reference(model_key, version)
        if reference is None:
            return None
        raw = self.connection.lrange(_WINDOW.format(model_key, version), 0, -1)
        width = reference.features.shape[1]
        rows = (
            np.stack([np.frombuffer(bytes.fromhex(as_text(r)), np.float32) for r in raw])
            if raw
            else np.zeros((0, len(STAT_NAMES) + width + 1), np.float32)
        )
        stats, features = rows[:, : len(STAT_NAMES)], rows[:, len(STAT_NAMES) : -1]
        usable = width > 0 and not np.isnan(features).any()
        started = time.perf_counter()
        result = compare(reference, stats, features if usable else None, rows[:, -1], self.settings)
        status = {
            **result.as_dict(),
            "model_key": model_key,
            "model_version": model_version,
            "project": project,
            "at": time.time(),
            "seconds": round(time.perf_counter() - started, 3),
        }
        record_status(self.connection, model_key, status)
        if result.drifted:
            log.warning(
                "DRIFT in %s (%s, %s): window of %d images, p=%s, confidence drop %s: %s",
                project,
                model_key,
                model_version,
                result.window,
                _fmt(result.p_value),
                _fmt(result.confidence_drop),
                "; ".join(result.reasons),
            )
            self._raise(project, model_key, model_version, status)
        else:
            log.info(
                "no drift in %s (%s): p=%s, confidence drop %s%s",
                project,
                model_version,
                _fmt(result.p_value),
                _fmt(result.confidence_drop),
                f" ({result.reasons[0]})" if result.reasons else "",
            )
        return status

    def _raise(
        self, project: str, model_key: str, model_version: str, status: dict[str, Any]
    ) -> None:
        if self.requests is None:
            return
        latest = next(
            iter(r for r in self.requests.list(project) if r["model_key"] == model_key), None
        )
        if latest and latest["status"] == "rejected" and latest["model_version"] == model_version:
            log.info(
                "drift in %s: a request for %s was rejected; not raising another for "
                "the same version",
                model_key,
                model_version,
            )
            return
        self.requests.raise_request(project, model_key, model_version, "drift", status)


def _row(observation: Observation, width: int) -> str:
    """statistics | backbone features (NaN when missing or of another width) | confidence."""
    features = observation.features
    if features is None or np.asarray(features).reshape(-1).shape != (width,):
        pooled = np.full(width, np.nan, np.float32)
    else:
        pooled = np.asarray(features, np.float32).reshape(-1)
    confidence = image_confidence(observation.confidences)
    return (
        np.concatenate(
            [image_statistics(observation.image), pooled, np.array([confidence], np.float32)]
        )
        .astype(np.float32)
        .tobytes()
        .hex()  # text: readable whatever the client's decode_responses
    )


def _load(path: Path) -> Reference | None:
    if not path.exists():
        return None
    try:
        return Reference.load(path)
    except (OSError, ValueError, KeyError) as exc:
        log.error("drift reference %s is unreadable: %s", path, exc)
        return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
