"""The JSON CVAT's lambda manager sends to nuclio functions, parsed at the edge."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from labelpilot.backends.images import DEFAULT_MAX_PIXELS, ImageError, decode_image

Point = tuple[float, float]


class PayloadError(ValueError):
    """The payload parses but cannot be used; the message says what to fix."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(min_length=1, description="the frame, base64-encoded")

    def decoded_image(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        try:
            data = base64.b64decode(self.image, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PayloadError(f"'image' is not valid base64: {exc}") from exc
        try:
            return decode_image(data, max_pixels=max_pixels)
        except ImageError as exc:
            raise PayloadError(f"'image': {exc}") from exc


class DetectorRequest(_Body):
    threshold: float | None = Field(default=None, ge=0, le=1)
    roi: tuple[float, float, float, float] | None = None  # [x1, y1, x2, y2], as agents send


class InteractorRequest(_Body):
    pos_points: list[Point] = Field(default_factory=list)
    neg_points: list[Point] = Field(default_factory=list)
    obj_bbox: tuple[Point, Point] | None = None


class ShapeIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    points: list[float]


class TrackerRequest(_Body):
    shapes: list[ShapeIn | list[float] | None] = Field(default_factory=list)
    states: list[dict[str, Any] | None] = Field(default_factory=list)

    @field_validator("states", mode="before")
    @classmethod
    def _states(cls, value: Any) -> Any:
        return [] if value is None else value

    def pairs(self) -> list[tuple[ShapeIn | None, dict[str, Any] | None]]:
        """(shape, state) per tracked object; legacy bare point lists are rectangles."""
        shapes = [ShapeIn(type="rectangle", points=s) if isinstance(s, list) else s
                  for s in self.shapes]
        if self.states and shapes and len(shapes) != len(self.states):
            raise PayloadError(f"'shapes' has {len(shapes)} entries but 'states' has "
                               f"{len(self.states)}; send one state per shape")
        count = max(len(shapes), len(self.states))
        if count == 0:
            raise PayloadError("nothing to track: send 'shapes' (start) or 'states' (continue)")
        shapes += [None] * (count - len(shapes))
        states = list(self.states) + [None] * (count - len(self.states))
        for i, (shape, state) in enumerate(zip(shapes, states, strict=True)):
            if shape is None and state is None:
                raise PayloadError(f"object {i} has neither a shape nor a state")
        return list(zip(shapes, states, strict=True))
