"""Training input in our own terms: an image file plus what a person labelled on it, and the
labelled items a source had to leave out (named in the version's manifest, never dropped
silently)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labelpilot.backends.shapes import Instance


@dataclass(frozen=True)
class Sample:
    sample_id: str  # stable across runs (e.g. "task-12"): decides the train/val/holdout split
    image: Path
    width: int
    height: int
    instances: tuple[Instance, ...] = ()
    classes: tuple[str, ...] = ()  # image-level labels (classification)
    provenance: dict[str, str] = field(default_factory=dict, hash=False)  # ids for the manifest
    # the unit of the train/val/holdout split ("" = the sample itself): all frames of one video
    # share it, so near-copies of a training frame never sit in the holdout
    group: str = ""


@dataclass(frozen=True)
class Skipped:
    """A labelled item left out of training, and why (e.g. its image failed to download)."""

    sample_id: str  # as its `Sample` would have been named, e.g. "task-12"
    reason: str
    provenance: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class SampleSet:
    """What a `LabelSource` pulled: the samples that train and the items it left out."""

    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
