"""Label-error scores on hand-built annotations and predictions, input checks, and one real
2-fold run (tiny, 1 epoch) for the out-of-fold plumbing."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from labelpilot.backends.shapes import BBox, Instance
from labelpilot.synthetic import CLASSES, make_image
from labelpilot.trainers.label_errors import (
    Finding,
    LabelErrorInputError,
    assign_folds,
    find_label_errors,
    image_score,
    iou_matrix,
    score_sample,
)
from labelpilot.trainers.samples import Sample


def box(x1: float, y1: float, x2: float, y2: float, cls: str = "circle",
        score: float = 1.0) -> Instance:
    return Instance(cls, score, box=BBox(x1, y1, x2, y2))


def kinds(findings: list[Finding]) -> list[tuple[str, int | None]]:
    return [(f.kind, f.instance_index) for f in findings]


def test_iou_matrix_on_hand_computed_boxes() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], dtype=float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    expected = [[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]]
    assert iou_matrix(a, b) == pytest.approx(np.array(expected))


def test_a_correct_annotation_scores_low() -> None:
    annotated = [box(10, 10, 50, 50), box(60, 60, 90, 90, "square")]
    predicted = [box(11, 9, 51, 50, score=0.92), box(61, 60, 90, 91, "square", 0.88),
                 box(100, 100, 104, 104, "triangle", 0.06)]  # a faint false alarm
    findings = score_sample(annotated, predicted)
    assert image_score(findings) < 0.1


def test_a_missing_box_is_found_with_the_predicted_box_and_class() -> None:
    annotated = [box(10, 10, 50, 50)]
    predicted = [box(10, 10, 50, 50, score=0.9), box(100, 100, 140, 140, "triangle", 0.85)]
    findings = score_sample(annotated, predicted)
    assert kinds(findings) == [("missing", None)]
    (missing,) = findings
    assert missing.score == pytest.approx(0.85)
    assert missing.evidence.predicted_class == "triangle"
    assert missing.evidence.predicted_box == BBox(100, 100, 140, 140)
    assert missing.evidence.iou == 0.0


def test_an_image_without_annotations_and_a_confident_prediction_misses_an_object() -> None:
    findings = score_sample([], [box(0, 0, 30, 30, "square", 0.7)])
    assert kinds(findings) == [("missing", None)]
    assert image_score(findings) == pytest.approx(0.7)
    assert score_sample([], []) == [] and image_score([]) == 0.0


def test_a_swapped_class_is_wrong_class_scored_by_how_sure_the_model_is() -> None:
    annotated = [box(60, 60, 90, 90, "square"), box(10, 10, 50, 50, "circle")]
    predicted = [box(61, 60, 90, 91, "square", 0.9), box(10, 11, 50, 50, "triangle", 0.9)]
    findings = score_sample(annotated, predicted)
    assert kinds(findings) == [("wrong_class", 1)]  # the triangle is not also "missing"
    assert findings[0].score == pytest.approx(0.9)
    assert findings[0].evidence.predicted_class == "triangle"
    # the model also half-believes the annotated class: less sure it is a mistake
    hedged = score_sample(annotated, [*predicted, box(10, 10, 50, 51, "circle", 0.5)])
    assert kinds(hedged) == [("wrong_class", 1)]
    assert hedged[0].score == pytest.approx(0.45)


def test_a_shifted_box_is_bad_location_higher_when_further_off() -> None:
    predicted = [box(20, 20, 60, 60, "square", 0.9)]
    scores = []
    for shift in (0, 4, 8, 14):  # IoU with the prediction: 1, 0.82, 0.67, 0.48
        findings = score_sample([box(20 + shift, 20, 60 + shift, 60, "square")], predicted)
        assert all(f.kind == "bad_location" and f.instance_index == 0 for f in findings)
        scores.append(image_score(findings))
    assert scores[0] == 0.0
    assert scores[0] < scores[1] < scores[2] < scores[3]
    assert scores[3] == pytest.approx(0.9)  # IoU under `poor_iou`: the model's confidence


def test_instances_without_a_box_keep_their_index() -> None:
    annotated = [Instance("circle", 1.0, polygon=((0, 0), (5, 0), (5, 5))),
                 box(10, 10, 50, 50, "circle")]
    findings = score_sample(annotated, [box(10, 10, 50, 50, "square", 0.8)])
    assert kinds(findings) == [("wrong_class", 1)]


def make_samples(directory: Path, count: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        shape = make_image(rng, 160)
        path = directory / f"{i}.png"
        cv2.imwrite(str(path), shape.image)
        instances = tuple(box(b.x1, b.y1, b.x2, b.y2, b.class_name) for b in shape.boxes)
        samples.append(Sample(f"task-{i}", path, 160, 160, instances))
    return samples


def test_folds_are_fixed_by_sample_id_and_balanced(tmp_path: Path) -> None:
    samples = [Sample(f"task-{i}", tmp_path / f"{i}.png", 10, 10) for i in range(50)]
    buckets = assign_folds(samples, 3)
    again = assign_folds(list(reversed(samples)), 3)
    assert [[s.sample_id for s in b] for b in buckets] == [[s.sample_id for s in b]
                                                           for b in again]
    assert sorted(s.sample_id for b in buckets for s in b) == sorted(s.sample_id
                                                                     for s in samples)
    assert sorted(map(len, buckets)) == [16, 17, 17]
    assert [s.sample_id for s in buckets[0]] != [f"task-{i}" for i in range(0, 50, 3)]


def test_frames_of_one_video_share_a_fold(tmp_path: Path) -> None:
    """A model that trained on a clip's other frames would find its labels right: near-copies."""
    samples = [Sample(f"task-{v}-f{f:06d}", tmp_path / f"{v}-{f}.png", 10, 10,
                      group=f"task-{v}") for v in range(9) for f in range(1, 5 + v)]
    buckets = assign_folds(samples, 3)
    homes = {s.group: {i for i, b in enumerate(buckets) for t in b if t.group == s.group}
             for s in samples}
    assert all(len(h) == 1 for h in homes.values()), homes
    assert max(map(len, buckets)) - min(map(len, buckets)) <= 12
    assert buckets == assign_folds(list(reversed(samples)), 3)


@pytest.mark.parametrize(("count", "task", "folds", "classes", "message"), [
    (3, "detect", 2, CLASSES, "too few"),
    (8, "classify", 2, CLASSES, "supports detect"),
    (8, "detect", 1, CLASSES, "at least 2 folds"),
    (8, "detect", 2, (), "no class names"),
    (8, "detect", 2, ("dog",), "no annotated boxes"),
])
def test_unusable_input_is_refused_before_any_training(
        tmp_path: Path, count: int, task: str, folds: int, classes: tuple[str, ...],
        message: str) -> None:
    samples = make_samples(tmp_path / "images", count, seed=3)
    with pytest.raises(LabelErrorInputError, match=message):
        find_label_errors(samples, task=task, class_names=classes, work_dir=tmp_path / "w",
                          start_model="never-loaded.pt", folds=folds, epochs=1, imgsz=64)
    assert not (tmp_path / "w").exists()


def test_duplicate_sample_ids_are_refused(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "images", 6, seed=3)
    samples[1] = replace(samples[1], sample_id=samples[0].sample_id)
    with pytest.raises(LabelErrorInputError, match="unique"):
        find_label_errors(samples, task="detect", class_names=CLASSES, work_dir=tmp_path / "w",
                          start_model="never-loaded.pt", folds=2, epochs=1, imgsz=64)


def test_a_model_to_train_from_scratch_is_refused(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "images", 6, seed=3)
    with pytest.raises(LabelErrorInputError, match="trained weights"):
        find_label_errors(samples, task="detect", class_names=CLASSES, work_dir=tmp_path / "w",
                          start_model="yolo11n.yaml", folds=2, epochs=1, imgsz=64)


def test_one_class_only_still_finds_missing_and_misplaced_boxes() -> None:
    annotated = [box(10, 10, 50, 50, "cell"), box(100, 100, 140, 140, "cell")]
    predicted = [box(10, 10, 50, 50, "cell", 0.9), box(112, 100, 152, 140, "cell", 0.9),
                 box(60, 150, 90, 180, "cell", 0.8)]
    findings = score_sample(annotated, predicted)
    assert sorted(kinds(findings), key=str) == [("bad_location", 1), ("missing", None)]
    assert all(f.score > 0.7 for f in findings)


def test_every_sample_is_predicted_by_a_model_that_never_trained_on_it(
        tmp_path: Path, shapes_model: Path) -> None:
    samples = make_samples(tmp_path / "images", 16, seed=5)
    samples[0] = replace(samples[0], instances=())  # every box forgotten
    first = samples[1].instances[0]
    swapped = "circle" if first.class_name == "triangle" else "triangle"
    samples[1] = replace(samples[1], instances=(replace(first, class_name=swapped),
                                                *samples[1].instances[1:]))
    events: list[dict[str, Any]] = []
    report = find_label_errors(
        samples, task="detect", class_names=CLASSES, work_dir=tmp_path / "w",
        start_model=str(shapes_model), folds=2, epochs=1, imgsz=160, progress=events.append)
    assert sorted(r.sample_id for r in report.samples) == sorted(s.sample_id for s in samples)
    splits = [json.loads((tmp_path / "w" / f"fold-{k}" / "split.json").read_text())
              for k in range(2)]
    predicted_by = [s for split in splits for s in split["predict"]]
    assert sorted(predicted_by) == sorted(s.sample_id for s in samples)  # each exactly once
    for split in splits:
        assert len(split["predict"]) == 8 and len(split["train"]) == 8
        assert not set(split["predict"]) & set(split["train"])
    assert {(e["fold"], e["folds"]) for e in events} == {(1, 2), (2, 2)}
    assert [e["phase"] for e in events if e["fold"] == 2][-1] == "predicting"
    # the two mistakes rank first: the unlabelled objects, the swapped class
    top = {r.sample_id: r for r in report.samples[:2]}
    assert set(top) == {"task-0", "task-1"}
    assert {f.kind for f in top["task-0"].findings} == {"missing"}
    assert top["task-0"].score > 0.8
    assert (top["task-1"].findings[0].kind, top["task-1"].findings[0].instance_index) == (
        "wrong_class", 0)
    assert top["task-1"].findings[0].evidence.predicted_class == first.class_name
