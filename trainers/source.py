"""What a platform hands the training job: a `LabelSource`, and the `TrainSpec` it describes.

The job (`labelpilot.trainers.job.run_training_job`) asks a source for its samples first and
for the spec second, because a source may choose the model task from the labels it pulled
(CVAT: mostly skeletons → pose). Sources speak our own terms only: `Sample`s and a spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labelpilot.trainers.pipeline import Progress
from labelpilot.trainers.samples import Sample, SampleSet


@dataclass(frozen=True)
class TrainSpec:
    """What to train."""

    model_key: str  # model-store key of the versions, e.g. "ls-3-label", "cvat-task-5"
    task: str  # detect | segment | obb | pose | classify
    class_names: tuple[str, ...]
    keypoint_count: int = 0  # pose: keypoints per object (K of kpt_shape)
    # model reference (path or ultralytics name) that serves while the key has no version yet:
    # the first version starts from it and must beat it; None: train from the task's YAML
    default_model: str | None = None
    notes: Mapping[str, Any] = field(default_factory=dict, hash=False)  # kept in the trigger


class LabelSource(Protocol):
    """Where one training job's labels come from (an LS project, a CVAT task or project)."""

    @property
    def key(self) -> str:
        """Queue and settings key: one training at a time per key (e.g. "ls-3")."""
        ...

    def write_samples(self, directory: Path, progress: Progress) -> SampleSet:
        """Pull the current labels; images go under `directory`, which lives as long as the job.
        Labelled items that cannot train (their image failed) are returned as `skipped`, with
        the reason. Called once per job, before `describe`."""
        ...

    def describe(self, samples: Sequence[Sample]) -> TrainSpec:
        """What to train from `samples`."""
        ...
