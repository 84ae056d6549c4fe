"""Store versions of the shapes model with a kept holdout, for the export and runtime tests."""

from __future__ import annotations

from pathlib import Path

from labelpilot.backends.model_store import HOLDOUT_FILE, ModelStore, ModelVersion
from labelpilot.trainers.dataset import build_dataset
from labelpilot.trainers.holdout import pack_holdout
from tests.helpers import shapes_samples

CLASSES = ("circle", "square", "triangle")


def holdout_zip(directory: Path, count: int = 40) -> Path:
    """The holdout of generated, exactly labelled shape images, as training keeps it."""
    directory.mkdir(parents=True, exist_ok=True)
    samples = shapes_samples(directory / "images", count)
    dataset = build_dataset(samples, "detect", CLASSES, directory / "data")
    return pack_holdout(dataset, directory / HOLDOUT_FILE)


def shapes_version(store: ModelStore, key: str, weights: Path,
                   holdout: Path | None) -> ModelVersion:
    """A version of `key` with the shapes model's weights (and `holdout`, when given)."""
    extra = {HOLDOUT_FILE: holdout} if holdout else {}
    return store.write_version(key, weights, {"task": "detect", "class_names": list(CLASSES)},
                               extra_files=extra)
