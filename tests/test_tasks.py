"""The one table of model tasks, and the per-platform tables that refer to it."""

from __future__ import annotations

import pytest

from labelpilot.adapters.cvat.tasks import CVAT_TASKS
from labelpilot.adapters.label_studio.config import CONTROL_TASKS, default_model
from labelpilot.backends import yolo
from labelpilot.backends.errors import UnknownTaskError
from labelpilot.backends.tasks import TASKS, task_spec
from labelpilot.trainers import dataset
from labelpilot.trainers.pipeline import scratch_model
from labelpilot.trainers.yolo_train import primary_metric


def test_every_task_is_served_trained_and_known_to_cvat() -> None:
    assert set(TASKS) == {"detect", "segment", "pose", "obb", "classify"}
    assert set(yolo._CONVERTERS) == set(TASKS)
    assert set(dataset._LABEL_LINES) == {t for t, s in TASKS.items() if s.layout == "labels"}
    assert set(CVAT_TASKS) == set(TASKS)
    assert {c.default.name for c in CONTROL_TASKS.values()} == set(TASKS)
    for control in CONTROL_TASKS.values():
        assert control.default.name in control.compatible <= set(TASKS)


def test_defaults_come_from_the_table() -> None:
    assert default_model("segment") == "yolo11n-seg.pt" == TASKS["segment"].default_weights
    assert scratch_model("classify") == "yolo11n-cls.yaml"
    assert task_spec("pose").primary_metric == "map50_95"
    assert primary_metric({"accuracy_top1": 0.5, "accuracy_top5": 1.0}) == ("accuracy_top1", 0.5)


def test_an_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(UnknownTaskError, match="unknown model task 'track'.*detect"):
        task_spec("track")
    with pytest.raises(ValueError, match="track"):
        scratch_model("track")
