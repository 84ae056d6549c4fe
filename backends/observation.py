"""What the serving path tells the watchers (quality, drift, usage) about each predicted image.

The predictor hands every model batch to its observers after predicting; an observer must be
cheap (the whole watch path stays within a few percent of the model's time) and its failures
are logged, never returned to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

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


def notify(observers: Sequence[Observer], batch: Sequence[Observation]) -> None:
    """Hand `batch` to every observer; one that fails is logged and the others still run."""
    if not batch:
        return
    for observer in observers:
        try:
            observer.observe(batch)
        except Exception:
            log.exception("observer %s failed on %d image(s)", type(observer).__name__,
                          len(batch))
