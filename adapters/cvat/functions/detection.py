"""A YOLO model (any task) as a cvat-sdk detection function.

    cvat-cli --server-host URL --auth USER task auto-annotate TASK_ID \\
        --function-module labelpilot.adapters.cvat.functions.detection \\
        -p model=str:/models/best.pt [-p conf=float:0.3] [-p score_attribute=bool:true]

``model`` is a path (absolute, under ``model_dir`` — default ``models`` — or relative to the
working directory) or an ultralytics name on a connected machine (``-p download=bool:false``
forbids downloading it); ``device`` (``cpu``, ``cuda:0``; default: CUDA when present) and
``max_batch`` as the server's settings. Its class names become the spec's labels (matched to
the task's labels by name). ``score_attribute=true`` declares a text attribute ``score``
carrying the confidence (the task's labels must then have it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cvat_sdk.auto_annotation as cvataa
import PIL.Image
from cvat_sdk import models

from labelpilot.adapters.cvat.detector import Detection, cvat_annotations, detect
from labelpilot.adapters.cvat.functions import pil_to_bgr
from labelpilot.adapters.cvat.shapes import sdk_requests
from labelpilot.adapters.cvat.spec import SCORE_ATTRIBUTE, LabelSpec, model_labels, skeleton_svg
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.offline import configure_ultralytics
from labelpilot.backends.yolo import DEFAULT_MAX_BATCH, YoloModel


def sdk_label(label: LabelSpec, score_attribute: bool) -> models.PatchedLabelRequest:
    attributes = [cvataa.text_attribute_spec(SCORE_ATTRIBUTE, 0)] if score_attribute else []
    if label.type == "skeleton":
        return cvataa.skeleton_label_spec(
            label.name, label.id, [cvataa.keypoint_spec(n, i)
                                   for i, n in enumerate(label.keypoints)],
            attributes=attributes, svg=skeleton_svg(label.keypoints, label.edges))
    return cvataa.label_spec(label.name, label.id, type=label.type, attributes=attributes)


@dataclass(frozen=True)
class YoloDetectionFunction:
    """cvat-sdk's DetectionFunction protocol over a loaded `YoloModel`."""

    model: YoloModel
    labels: tuple[LabelSpec, ...]
    spec: cvataa.DetectionFunctionSpec
    conf: float | None = None
    score_attribute: bool = False

    def detect(self, context: cvataa.DetectionFunctionContext,
               image: PIL.Image.Image) -> list[cvataa.DetectionAnnotation]:
        threshold = context.conf_threshold if context.conf_threshold is not None else self.conf
        detection = detect(self.model, pil_to_bgr(image), threshold)
        return sdk_shapes(detection, self.labels, self.score_attribute,
                          context.conv_mask_to_poly)


def sdk_shapes(detection: Detection, labels: Sequence[LabelSpec], score_attribute: bool = False,
               to_polygon: bool = False) -> list[cvataa.DetectionAnnotation]:
    """`detect`'s result as cvat-sdk requests (frame 0, label ids from our spec)."""
    return sdk_requests(cvat_annotations(detection, labels), score_attribute, to_polygon)


def create(model: str, conf: float | None = None, score_attribute: bool = False,
           device: str = "", model_dir: str = "models", download: bool = True,
           max_batch: int = DEFAULT_MAX_BATCH) -> YoloDetectionFunction:
    """The factory cvat-cli calls with the ``-p`` parameters."""
    configure_ultralytics()

    weights = ModelLocator(Path(model_dir), download).resolve(model)
    loaded = YoloModel(weights, device=device, max_batch=max_batch)
    labels = model_labels(loaded.task, loaded.class_names,
                          loaded.keypoint_count)
    spec = cvataa.DetectionFunctionSpec(labels=[sdk_label(label, score_attribute)
                                                for label in labels])
    return YoloDetectionFunction(loaded, labels, spec, conf, score_attribute)
