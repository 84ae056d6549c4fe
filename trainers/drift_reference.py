"""The drift reference of a new version: what its training images look like to it.

Written next to the weights (``reference.npz`` in the version directory) right after training,
with the candidate weights: image statistics, pooled backbone features and the candidate's mean
confidence for up to `limit` of the dataset's images. The drift monitor compares what /predict
sees against it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from labelpilot.backends.drift import (
    Reference,
    image_confidence,
    image_statistics,
    prediction_confidences,
)
from labelpilot.backends.yolo import YoloModel

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference.npz"
REFERENCE_LIMIT = 200  # images: enough for a two-sample test, a few seconds of inference


def reference_images(
    images: Sequence[Path], limit: int = REFERENCE_LIMIT, seed: int = 0
) -> list[Path]:
    """Up to `limit` distinct images, a seeded sample when there are more."""
    distinct = sorted(set(images))
    if len(distinct) <= limit:
        return distinct
    return sorted(random.Random(seed).sample(distinct, limit))


def build_reference(
    weights: str,
    images: Sequence[Path],
    *,
    task: str | None = None,
    imgsz: int | None = None,
    device: str = "",
    conf: float = 0.25,
    limit: int = REFERENCE_LIMIT,
) -> Reference | None:
    """The reference of `weights` on (a sample of) `images`; None when none can be read."""
    model = YoloModel(weights, device=device, task=task)
    stats: list[np.ndarray] = []
    features: list[np.ndarray] = []
    confidences: list[float] = []
    chosen = reference_images(images, limit)
    for start in range(0, len(chosen), 16):
        batch = [
            image
            for image in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in chosen[start : start + 16])
            if image is not None
        ]
        if not batch:
            continue
        predictions, pooled = model.predict_with_features(batch, conf=conf, imgsz=imgsz)
        stats.extend(image_statistics(image) for image in batch)
        features.append(pooled)
        confidences.extend(image_confidence(prediction_confidences(p)) for p in predictions)
    if not stats:
        return None
    widths = {f.shape[1] for f in features}
    pooled_all = (
        np.concatenate(features) if len(widths) == 1 else np.zeros((len(stats), 0), np.float32)
    )
    return Reference(
        np.stack(stats), pooled_all.astype(np.float32), np.asarray(confidences, np.float32)
    )


def write_reference(
    weights: str,
    images: Sequence[Path],
    directory: Path,
    *,
    task: str | None = None,
    imgsz: int | None = None,
    device: str = "",
) -> dict[str, Path]:
    """The extra files of a version (``{"reference.npz": path}``), or none when the reference
    cannot be built: a version without one is served all the same, only not watched for
    drift (logged)."""
    try:
        reference = build_reference(weights, images, task=task, imgsz=imgsz, device=device)
    except Exception:  # a reference is an extra: it must never cost the trained version
        log.exception("could not build the drift reference of %s", weights)
        return {}
    if reference is None:
        log.warning("no readable images for the drift reference of %s", weights)
        return {}
    path = directory / REFERENCE_FILE
    reference.save(path)
    return {REFERENCE_FILE: path}
