"""LS annotations → training samples → ultralytics dataset layouts (pose and classify too)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from labelpilot.adapters.label_studio.annotations import POSE_CLASS, task_choices, task_poses
from labelpilot.adapters.label_studio.config import parse_label_config
from labelpilot.adapters.label_studio.training import (
    keypoint_count,
    pose_boxes,
    trainable_control,
    training_classes,
)
from labelpilot.backends.shapes import BBox, Instance, Keypoint
from labelpilot.trainers.dataset import DatasetError, build_dataset
from labelpilot.trainers.samples import Sample

POSE_CONFIG = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="Person"/><Label value="Dog"/>
  </RectangleLabels>
  <KeyPointLabels name="kp" toName="image">
    <Label value="head" model_index="0"/><Label value="tail" model_index="2"/>
  </KeyPointLabels></View>"""
CHOICES_CONFIG = """<View><Image name="image" value="$image"/>
  <Choices name="class" toName="image"><Choice value="Square"/><Choice value="Circle"/>
  </Choices></View>"""


def _kp(x: float, y: float, label: str) -> dict:
    return {"from_name": "kp", "to_name": "image", "type": "keypointlabels",
            "value": {"x": x, "y": y, "width": 0.75, "keypointlabels": [label]}}


def _box(x: float, y: float, w: float, h: float, label: str) -> dict:
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}


def test_keypoints_are_grouped_into_the_smallest_box_that_contains_them() -> None:
    plan = parse_label_config(POSE_CONFIG)
    control = trainable_control(plan)
    assert control.kind == "keypoint"  # keypoints win: the pose model also gives the boxes
    assert keypoint_count(control) == 3 and training_classes(plan, control) == ("Person", "Dog")
    task = {"annotations": [{"id": 1, "result": [
        _box(0, 0, 100, 100, "Person"), _box(10, 10, 20, 20, "Dog"),
        _kp(15, 15, "head"), _kp(25, 25, "tail"), _kp(80, 80, "head"),
        _kp(50, 50, "unknown-label")]}]}
    poses, annotation = task_poses(task, control, pose_boxes(plan, control), 200, 100)
    assert annotation is not None
    by_class = {p.class_name: p for p in poses}
    assert set(by_class) == {"Person", "Dog"}
    dog = by_class["Dog"]
    assert dog.box == BBox(20, 10, 60, 30)
    assert {(k.index, k.x, k.y) for k in dog.keypoints or ()} == {(0, 30, 15), (2, 50, 25)}
    assert [(k.index, k.x, k.y) for k in by_class["Person"].keypoints or ()] == [(0, 160, 80)]


def test_keypoints_without_boxes_make_one_object_per_image() -> None:
    plan = parse_label_config(POSE_CONFIG.replace(
        '<RectangleLabels name="box" toName="image"><Label value="Person"/><Label value="Dog"/>'
        "\n  </RectangleLabels>", ""))
    control = trainable_control(plan)
    assert pose_boxes(plan, control) is None and training_classes(plan, control) == (POSE_CLASS,)
    task = {"annotations": [{"id": 1, "result": [_kp(10, 20, "head"), _kp(30, 40, "tail")]}]}
    (pose,), _ = task_poses(task, control, None, 100, 100)
    assert pose.class_name == POSE_CLASS and pose.box is None and len(pose.keypoints or ()) == 2


def test_choices_are_read_from_the_chosen_annotation() -> None:
    control = trainable_control(parse_label_config(CHOICES_CONFIG))
    task = {"annotations": [
        {"id": 1, "updated_at": "2026-01-01", "result": [
            {"from_name": "class", "type": "choices", "value": {"choices": ["Square"]}}]},
        {"id": 2, "updated_at": "2026-02-01", "result": [
            {"from_name": "class", "type": "choices", "value": {"choices": ["Circle", "Bogus"]}}]},
        {"id": 3, "updated_at": "2026-03-01", "was_cancelled": True, "result": []}]}
    assert task_choices(task, control) == (("Circle",), task["annotations"][1])


def _samples(tmp: Path, n: int, **kwargs: object) -> list[Sample]:
    tmp.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = tmp / f"{i}.png"
        cv2.imwrite(str(path), np.full((50, 100, 3), i, np.uint8))
        out.append(Sample(f"task-{i}", path, 100, 50, **kwargs))  # type: ignore[arg-type]
    return out


def test_pose_labels_have_box_and_all_keypoints(tmp_path: Path) -> None:
    pose = Instance("Dog", 1.0, box=BBox(10, 10, 30, 20),
                    keypoints=(Keypoint(2, 20, 15, 1.0), Keypoint(0, 12, 12, 1.0)))
    loose = Instance("Dog", 1.0, keypoints=(Keypoint(1, 50, 25, 1.0),))
    built = build_dataset(_samples(tmp_path / "src", 12, instances=(pose, loose)), "pose",
                          ("Person", "Dog"), tmp_path / "ds", keypoint_count=3)
    assert "kpt_shape: [3, 3]" in built.train_data.read_text()
    label = next((tmp_path / "ds" / "labels").rglob("*.txt")).read_text().splitlines()
    assert label[0] == ("1 0.200000 0.300000 0.200000 0.200000 "
                        "0.120000 0.240000 2 0 0 0 0.200000 0.300000 2")
    first, rest = label[1].split(" ", 5)[:5], label[1].split(" ")[5:]
    assert first[0] == "1" and rest == ["0", "0", "0", "0.500000", "0.500000", "2", "0", "0", "0"]
    with pytest.raises(DatasetError, match="number of keypoints"):
        build_dataset(_samples(tmp_path / "src", 3), "pose", ("Dog",), tmp_path / "ds2")


def test_classify_uses_class_folders_and_the_holdout_as_test(tmp_path: Path) -> None:
    samples = [Sample(s.sample_id, s.image, 100, 50, classes=(("Square", "Circle")[i % 2],))
               for i, s in enumerate(_samples(tmp_path / "src", 30))]
    built = build_dataset(samples, "classify", ("Square", "Circle"), tmp_path / "ds")
    assert built.class_names == ("Circle", "Square")  # ultralytics' order: sorted folders
    assert built.holdout_split == "test" and built.train_data == tmp_path / "ds"
    for folder in ("train", "val", "test"):
        assert {p.name for p in (tmp_path / "ds" / folder).iterdir()} == {"Circle", "Square"}
    assert sum(built.counts.values()) == 30
    assert len(list((tmp_path / "ds" / "test").rglob("*.png"))) == built.counts["holdout"]
    with pytest.raises(DatasetError, match="folder name"):
        build_dataset(samples, "classify", ("a/b",), tmp_path / "ds3")


def test_unknown_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot build a dataset for a track model"):
        build_dataset(_samples(tmp_path, 3), "track", ("x",), tmp_path / "ds")


def test_a_pose_model_with_other_keypoints_is_not_compared(tmp_path: Path) -> None:
    """COCO's 17-keypoint model vs a project's 3 keypoints: no holdout comparison (None),
    instead of a crash in ultralytics' validator; the gate then treats it as not comparable."""
    from labelpilot.backends.offline import import_ultralytics
    from labelpilot.trainers.yolo_train import evaluate_yolo

    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO("yolo11n-pose.yaml")  # kpt_shape [17, 3]
    model.save(str(tmp_path / "pose17.pt"))
    names = tuple(str(n) for n in model.names.values())
    assert evaluate_yolo(str(tmp_path / "pose17.pt"), tmp_path / "absent.yaml", imgsz=160,
                         task="pose", class_names=names, keypoint_count=3) is None
