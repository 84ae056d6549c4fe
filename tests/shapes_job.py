"""A real training job with labels that need no Label Studio: generated shape images with their
exact boxes, trained by labelpilot's own job skeleton (`run_training_job`: heartbeats,
progress, version written to the store). The multi-host test queues it by name, as the
webhook handler queues LS trainings; workers import it with the repository on PYTHONPATH."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labelpilot.synthetic import CLASSES
from labelpilot.trainers.pipeline import Progress
from labelpilot.trainers.samples import Sample, SampleSet
from labelpilot.trainers.source import TrainSpec

JOB = "tests.shapes_job.train_shapes"


class ShapesSource:
    def __init__(self, key: str, count: int, seed: int):
        self._key = key
        self.count = count
        self.seed = seed

    @property
    def key(self) -> str:
        return self._key

    def write_samples(self, directory: Path, progress: Progress) -> SampleSet:
        from tests.helpers import shapes_samples

        return SampleSet(shapes_samples(directory, self.count, self.seed))

    def describe(self, samples: Sequence[Sample]) -> TrainSpec:
        return TrainSpec(model_key=self._key, task="detect", class_names=CLASSES)


def train_shapes(key: str, count: int = 16, seed: int = 5,
                 trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `key` (a YOLO from YAML) on `count` generated images; its params (epochs, imgsz)
    are the key's training settings in Redis."""
    from labelpilot.jobs import job_connection
    from labelpilot.runtime import model_locator, model_store
    from labelpilot.settings import load_settings
    from labelpilot.trainers.job import run_training_job

    settings = load_settings()
    connection = job_connection()
    return run_training_job(ShapesSource(key, count, seed), connection,
                            model_store(settings, connection), trigger,
                            locator=model_locator(settings), device="cpu")
