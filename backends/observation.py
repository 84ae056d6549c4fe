"""What the serving path tells the watchers (quality, drift, usage) about each predicted image.

The predictor hands every model batch to its observers after predicting; an observer must be
cheap (the whole watch path stays within a few percent of the model's time) and its failures
are logged, never returned to the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import redis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One image as a model saw it while serving."""

    project: str  # the project key: "ls-3", "cvat-task-7"
    model_key: str | None  # model-store key of the served version; None: default weights
    model_version: str  # what the platform sees ("ls-3-label-v2", "yolo11n")
    item: str  # the task id as text, or the image's URL / file name
    image: np.ndarray  # BGR uint8 exactly as the model got it (after any band mapping)
    bands: int  # bands in the source file (3 for RGB, 1 gray, 4 RGB+NIR)
    features: np.ndarray | None  # pooled backbone features of this image (1-D), if captured
    confidences: tuple[float, ...]  # of the regions predicted for this image


class Observer(Protocol):
    def observe(self, batch: Sequence[Observation]) -> None: ...


PAUSE_AFTER_REDIS_ERROR_S = 10.0  # an observer whose Redis is down sits out this long
_paused_until: dict[int, float] = {}  # id(observer) → monotonic time it may run again


def notify(observers: Sequence[Observer], batch: Sequence[Observation]) -> None:
    """Hand `batch` to every observer; one that fails is logged and the others still run.
    An observer that hit a Redis error sits out `PAUSE_AFTER_REDIS_ERROR_S`, so a Redis
    outage costs /predict one connection timeout per pause, not one per batch."""
    if not batch:
        return
    for observer in observers:
        if _paused_until.get(id(observer), 0.0) > time.monotonic():
            continue
        try:
            observer.observe(batch)
        except redis.RedisError as exc:
            _paused_until[id(observer)] = time.monotonic() + PAUSE_AFTER_REDIS_ERROR_S
            log.warning("observer %s paused for %.0f s: Redis: %s", type(observer).__name__,
                        PAUSE_AFTER_REDIS_ERROR_S, exc)
        except Exception:
            log.exception("observer %s failed on %d image(s)", type(observer).__name__,
                          len(batch))
