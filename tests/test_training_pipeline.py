"""The training pipeline on real (tiny) trainings: the first-version floor, items left out of
training named in the version's manifest and the job log, epoch progress as ultralytics counts
it. Labels come the Label Studio way: task JSON whose images a real local HTTP server serves."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from labelpilot.adapters.label_studio.config import parse_label_config
from labelpilot.adapters.label_studio.image_source import ImageSource
from labelpilot.adapters.label_studio.training import (
    collect_samples,
    trainable_control,
    training_classes,
)
from labelpilot.backends.model_store import ModelStore
from labelpilot.label_config import load
from labelpilot.trainers.pipeline import TrainParams, TrainRequest, run_training
from labelpilot.trainers.samples import SampleSet
from tests.helpers import generate_images, ground_truth_result, serve_directory

PLAN = parse_label_config(load("detection_shapes"))
CONTROL = trainable_control(PLAN)


def pulled_from_label_studio(tmp_path: Path, url: str, images: list) -> SampleSet:
    """Every image annotated, plus two annotated tasks whose image fails (missing, truncated)."""
    tasks = [{"id": i + 1, "data": {"image": f"{url}/{image.path.name}"},
              "annotations": [{"id": 100 + i, "result": ground_truth_result(image),
                               "completed_by": 1, "updated_at": "2026-01-01"}]}
             for i, image in enumerate(images)]
    annotation = tasks[0]["annotations"]
    tasks.append({"id": 901, "data": {"image": f"{url}/missing.png"}, "annotations": annotation})
    tasks.append({"id": 902, "data": {"image": f"{url}/truncated.png"},
                  "annotations": annotation})
    tasks.append({"id": 903, "data": {"image": f"{url}/missing.png"}, "annotations": []})
    work = tmp_path / "pulled"
    work.mkdir()
    return collect_samples(tasks, PLAN, CONTROL, ImageSource(allowed_hosts=frozenset(
        {"127.0.0.1"})), work)


@pytest.fixture()
def served_images(tmp_path: Path):  # type: ignore[no-untyped-def]
    directory = tmp_path / "served"
    images = generate_images(directory, 14, seed=41)
    (directory / "truncated.png").write_bytes(images[0].path.read_bytes()[:100])
    with serve_directory(directory) as url:
        yield url, images


def store_for(tmp_path: Path, redis_url: str) -> ModelStore:
    return ModelStore(tmp_path / "store", redis.Redis.from_url(redis_url))


def test_a_useless_first_version_waits_for_an_admin_and_left_out_tasks_are_named(
        tmp_path, redis_url, served_images, caplog):
    """Two epochs from the YAML find nothing (mAP50 ~ 0): written, not promoted, with the
    reason; the two annotated tasks whose image failed are counted and named; progress never
    reports more epochs than asked for (ultralytics' final validation is not an epoch)."""
    url, images = served_images
    pulled = pulled_from_label_studio(tmp_path, url, images)
    assert len(pulled.samples) == len(images)
    assert [s.sample_id for s in pulled.skipped] == ["task-901", "task-902"]  # 903: unlabelled
    store = store_for(tmp_path, redis_url)
    key = "test-floor-detect"
    request = TrainRequest(key=key, task="detect", class_names=training_classes(PLAN, CONTROL),
                           samples=pulled.samples, base_model="yolo11n.yaml",
                           params=TrainParams(epochs=2, imgsz=160, batch=8),
                           skipped=pulled.skipped)
    updates: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="labelpilot.trainers.pipeline"):
        result = run_training(request, store, updates.append)

    candidate = result["metrics"]["candidate"]
    assert candidate["map50"] < 0.05
    assert result["decision"]["promote"] is False
    reason = result["decision"]["reason"]
    assert "below the floor 0.050" in reason and "waiting for an admin" in reason
    assert store.current(key) is None, "a model that finds nothing must not start serving"
    assert result["version"] == "v1"

    info = store.versions(key)[0].info()
    assert info["dataset"]["counts"]["skipped"] == 2 == result["dataset"]["counts"]["skipped"]
    left_out = {m["sample"]: m for m in info["dataset"]["manifest"] if m["split"] == "skipped"}
    assert set(left_out) == {"task-901", "task-902"}
    assert "HTTP 404" in left_out["task-901"]["reason"] and left_out["task-901"]["task"] == "901"
    assert "corrupt or truncated" in left_out["task-902"]["reason"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "2 labelled item(s) left out of training" in logged
    assert "task-901" in logged and "task-902" in logged
    assert {"phase": "dataset", "samples": len(images),
            "skipped": ["task-901", "task-902"]} in updates

    epochs = [(u["epoch"], u["epochs"]) for u in updates if u["phase"] == "training"]
    assert epochs == [(0, 2), (1, 2), (2, 2)], epochs
    assert any(u["phase"] == "validating" for u in updates)


def test_a_first_version_that_clears_the_floor_is_promoted(tmp_path, redis_url, served_images,
                                                           shapes_model):
    url, images = served_images
    pulled = pulled_from_label_studio(tmp_path, url, images)
    store = store_for(tmp_path, redis_url)
    key = "test-floor-good"
    request = TrainRequest(key=key, task="detect", class_names=training_classes(PLAN, CONTROL),
                           samples=pulled.samples, base_model=str(shapes_model),
                           # two epochs: ultralytics warms up on all but the last epoch, so a
                           # one-epoch fine-tune runs AdamW at full rate from its first step
                           # and wrecks a trained model (mAP50 0.002 here, 0.995 with two)
                           params=TrainParams(epochs=2, imgsz=160, batch=8),
                           skipped=pulled.skipped)
    result = run_training(request, store)
    assert result["metrics"]["candidate"]["map50"] >= 0.05
    assert result["decision"]["promote"] is True
    assert "reaches the floor 0.050" in result["decision"]["reason"]
    current = store.current(key)
    assert current is not None and current.version == result["version"]
