"""Interactive segmentation in our own terms: prompts in pixels → one mask.

One interface for every platform: the Label Studio interactive `/predict` and the CVAT
interactor both turn their clicks into a `Prompt` and get a `MaskResult` back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from labelpilot.backends.shapes import BBox


@dataclass(frozen=True, slots=True)
class PointPrompt:
    """A click in pixels of the upright original image; `positive=False` excludes the area."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True, slots=True)
class Prompt:
    """Points, a box, or both (SAM takes box + points together)."""

    points: tuple[PointPrompt, ...] = ()
    box: BBox | None = None

    def __post_init__(self) -> None:
        if not self.points and self.box is None:
            raise ValueError("a prompt needs at least one point or a box")


@dataclass(frozen=True, slots=True, eq=False)
class MaskResult:
    """The best of the model's candidate masks, at the image's size."""

    mask: np.ndarray  # bool, H x W
    score: float  # the model's own quality estimate (SAM: predicted IoU), 0..1


class Interactor(Protocol):
    """A model that answers prompts on an image (SAM, MobileSAM, …)."""

    @property
    def model_version(self) -> str: ...

    def segment(self, image: np.ndarray, prompt: Prompt) -> MaskResult:
        """`image` is BGR uint8 H x W x 3 as `backends.images.decode_image`
        returns it."""
        ...
