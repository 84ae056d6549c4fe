"""Training input in our own terms: an image file plus what a person labelled on it."""

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
