"""The template tracker as a cvat-sdk tracking function (for CVAT agents).

    cvat-cli --server-host URL --auth USER function create-native "labelpilot tracker" \\
        --function-module labelpilot.adapters.cvat.functions.tracking
    cvat-cli --server-host URL --auth USER function run-agent FUNCTION_ID \\
        --function-module labelpilot.adapters.cvat.functions.tracking

Same algorithm and state as the nuclio facade's tracker (see `labelpilot.adapters.cvat.tracker`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cvat_sdk.auto_annotation as cvataa
import numpy as np
import PIL.Image

from labelpilot.adapters.cvat import tracker
from labelpilot.adapters.cvat.functions import pil_to_bgr

SPEC = cvataa.TrackingFunctionSpec(supported_shape_types=tracker.SUPPORTED_SHAPE_TYPES)


@dataclass(frozen=True)
class TemplateTrackingFunction:
    """cvat-sdk's TrackingFunction protocol; the state is a JSON-able dict."""

    spec: cvataa.TrackingFunctionSpec = SPEC

    def preprocess_image(self, context: cvataa.TrackingFunctionContext,
                         image: PIL.Image.Image) -> np.ndarray:
        return pil_to_bgr(image)

    def init_tracking_state(self, context: cvataa.TrackingFunctionShapeContext,
                            pp_image: np.ndarray, shape: cvataa.TrackableShape
                            ) -> dict[str, Any]:
        return tracker.init_state(pp_image, tracker.TrackedShape(shape.type, list(shape.points)))

    def track(self, context: cvataa.TrackingFunctionShapeContext, pp_image: np.ndarray,
              state: dict[str, Any]) -> cvataa.TrackableShape | None:
        found, new_state = tracker.track(pp_image, state)
        if new_state is not state:  # a lost object keeps its state (the same object)
            state.clear()
            state.update(new_state)  # the agent keeps the object; cvat-sdk allows mutating it
        return cvataa.TrackableShape(type=found.type, points=found.points) if found else None


def create() -> TemplateTrackingFunction:
    return TemplateTrackingFunction()
