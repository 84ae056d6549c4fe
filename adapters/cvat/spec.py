"""CVAT label specs generated from a model's task and classes.

One neutral description (`LabelSpec`) rendered two ways: the nuclio ``spec`` annotation (a
JSON *string*, parsed by CVAT's lambda manager) and cvat-sdk's ``DetectionFunctionSpec`` (in
`labelpilot.adapters.cvat.functions.detection`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labelpilot.adapters.cvat.tasks import cvat_task

SCORE_ATTRIBUTE = "score"
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
# 1-based node pairs (COCO's skeleton)
COCO_EDGES = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
              (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6),
              (5, 7))


@dataclass(frozen=True)
class LabelSpec:
    id: int
    name: str
    type: str  # rectangle | mask | polygon | skeleton | tag
    keypoints: tuple[str, ...] = ()  # skeleton sublabels, in keypoint-index order
    edges: tuple[tuple[int, int], ...] = ()  # 1-based keypoint pairs drawn in the skeleton


def keypoint_names(count: int, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """Names for a pose model's keypoints: given ones, COCO's for 17, else "1".."K"."""
    if names and len(names) == count:
        return tuple(str(n) for n in names)
    if count == len(COCO_KEYPOINTS):
        return COCO_KEYPOINTS
    return tuple(str(i + 1) for i in range(count))


def model_labels(task: str, class_names: Sequence[str], keypoint_count: int = 0,
                 keypoints: Sequence[str] | None = None) -> tuple[LabelSpec, ...]:
    kind = cvat_task(task).label_type
    if kind != "skeleton":
        return tuple(LabelSpec(i, n, kind) for i, n in enumerate(class_names))
    names = keypoint_names(keypoint_count, keypoints)
    edges = COCO_EDGES if names == COCO_KEYPOINTS else tuple(
        (i + 1, i + 2) for i in range(len(names) - 1))
    return tuple(LabelSpec(i, n, kind, names, edges) for i, n in enumerate(class_names))


def skeleton_svg(keypoints: Sequence[str], edges: Sequence[tuple[int, int]]) -> str:
    """The SVG CVAT's skeleton editor stores: circles for nodes (ids 1..K), lines for edges."""
    count = max(1, len(keypoints))
    coords = {i + 1: (50 + 40 * math.cos(2 * math.pi * i / count),
                      50 + 40 * math.sin(2 * math.pi * i / count)) for i in range(count)}
    lines = [f'<line x1="{coords[a][0]:.2f}" y1="{coords[a][1]:.2f}" x2="{coords[b][0]:.2f}" '
             f'y2="{coords[b][1]:.2f}" data-type="edge" data-node-from="{a}" '
             f'data-node-to="{b}"></line>' for a, b in edges if a in coords and b in coords]
    circles = [f'<circle r="1.5" cx="{coords[i + 1][0]:.2f}" cy="{coords[i + 1][1]:.2f}" '
               f'data-type="element node" data-element-id="{i + 1}" data-node-id="{i + 1}" '
               f'data-label-name="{name}"></circle>' for i, name in enumerate(keypoints)]
    return "".join(lines + circles)


def nuclio_label(label: LabelSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": label.id, "name": label.name, "type": label.type,
        "attributes": [{"name": SCORE_ATTRIBUTE, "input_type": "text", "values": []}]}
    if label.type == "skeleton":
        body["sublabels"] = [{"id": i, "name": n, "type": "points", "attributes": []}
                             for i, n in enumerate(label.keypoints)]
        body["svg"] = skeleton_svg(label.keypoints, label.edges)
    return body


def nuclio_spec(labels: Sequence[LabelSpec]) -> str:
    """The ``metadata.annotations.spec`` string: a JSON list of labels."""
    return json.dumps([nuclio_label(label) for label in labels])


def project_label(label: LabelSpec) -> dict[str, Any]:
    """The label as CVAT's API creates it in a project (``cvat-cli project create --labels``),
    with a text attribute ``score`` so that detector confidences are kept."""
    body: dict[str, Any] = {
        "name": label.name, "type": label.type,
        "attributes": [{"name": SCORE_ATTRIBUTE, "input_type": "text", "mutable": False,
                        "values": [], "default_value": ""}]}
    if label.type == "skeleton":
        body["sublabels"] = [{"name": n, "type": "points", "attributes": []}
                             for n in label.keypoints]
        body["svg"] = skeleton_svg(label.keypoints, label.edges)
    return body


# label_config/cvat_<name>.json: CVAT projects that match labelpilot's models out of the box
PROJECT_TEMPLATES = {
    "detection_shapes": ("detect", ("circle", "square", "triangle"), 0),
    "pose_coco": ("pose", ("person",), len(COCO_KEYPOINTS)),
}


def project_template(name: str) -> list[dict[str, Any]]:
    task, classes, keypoints = PROJECT_TEMPLATES[name]
    return [project_label(label) for label in model_labels(task, classes, keypoints)]
