"""Training by image quality: copies of holdout images never train (leakage); low-quality
images train unless the project says `low_quality=skip`; the holdout keeps all its images; a
real (tiny) training names what it left out in the version's manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.quality import check_image, hamming
from labelpilot.trainers.dataset import sample_splits
from labelpilot.trainers.pipeline import TrainParams, TrainRequest, run_training
from labelpilot.trainers.quality_screen import screen_samples
from labelpilot.trainers.samples import Sample
from tests.helpers import shapes_samples


def samples_for(tmp_path: Path, count: int = 24) -> list[Sample]:
    return shapes_samples(tmp_path / "images", count)


def darken(path: Path) -> None:
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), (image.astype(np.float32) * 0.15).astype(np.uint8))


def pick(samples: list[Sample]) -> tuple[Sample, list[Sample]]:
    splits = sample_splits(samples)
    holdout = [s for s in samples if splits[s.sample_id] == "holdout"]
    train = [s for s in samples if splits[s.sample_id] == "train"]
    assert holdout and len(train) >= 3
    return holdout[0], train


def test_a_copy_of_a_holdout_image_does_not_train(tmp_path: Path) -> None:
    samples = samples_for(tmp_path)
    held, train = pick(samples)
    shutil.copy(held.image, train[0].image)  # the same picture labelled twice
    original = cv2.imread(str(held.image))  # and a noisier copy of it, a few bits apart
    noisy = np.clip(original + np.random.default_rng(0).normal(0, 8, original.shape), 0, 255)
    cv2.imwrite(str(train[1].image), noisy.astype(np.uint8))
    bits = hamming(check_image(original).phash, check_image(noisy.astype(np.uint8)).phash)
    assert 0 < bits <= TrainParams().quality_near_duplicate
    kept, left = screen_samples(samples, TrainParams())
    assert {e["sample"] for e in left} == {train[0].sample_id, train[1].sample_id}
    reasons = {e["sample"]: e["reason"] for e in left}
    assert reasons[train[0].sample_id] == (
        f"duplicate of holdout image {held.sample_id} (would leak the holdout into training)"
    )
    assert reasons[train[1].sample_id].startswith(
        f"near duplicate of holdout image {held.sample_id}"
    )
    assert all(e["split"] == "skipped" and e["task"] for e in left)
    assert held in kept and len(kept) == len(samples) - 2


def test_low_quality_images_train_unless_the_project_skips_them(tmp_path: Path) -> None:
    samples = samples_for(tmp_path)
    held, train = pick(samples)
    darken(train[2].image)
    darken(held.image)
    kept, left = screen_samples(samples, TrainParams())
    assert left == [] and len(kept) == len(samples)
    kept, left = screen_samples(samples, TrainParams(low_quality="skip"))
    assert [(e["sample"], e["reason"]) for e in left] == [
        (train[2].sample_id, "low quality: dark (setting low_quality=skip)")
    ]
    assert held in kept, "the holdout keeps its images: versions stay comparable"


def test_frames_of_a_video_are_not_compared_by_hash(tmp_path: Path) -> None:
    samples = samples_for(tmp_path)
    held, train = pick(samples)
    shutil.copy(held.image, train[0].image)
    grouped = [
        Sample(
            s.sample_id,
            s.image,
            s.width,
            s.height,
            s.instances,
            provenance=s.provenance,
            group=f"video-{i % 4}",
        )
        for i, s in enumerate(samples)
    ]
    kept, left = screen_samples(grouped, TrainParams())
    assert left == [] and len(kept) == len(grouped)


@pytest.mark.slow
def test_the_version_manifest_names_the_images_left_out(tmp_path: Path, redis_url: str) -> None:
    samples = samples_for(tmp_path)
    held, train = pick(samples)
    shutil.copy(held.image, train[0].image)
    darken(train[1].image)
    store = ModelStore(tmp_path / "store", redis.Redis.from_url(redis_url))
    request = TrainRequest(
        key="test-quality-screen",
        task="detect",
        class_names=("Circle", "Square", "Triangle"),
        samples=samples,
        base_model="yolo11n.yaml",
        params=TrainParams(epochs=1, imgsz=160, batch=8, low_quality="skip"),
    )
    updates: list[dict] = []
    result = run_training(request, store, updates.append)
    info = store.versions("test-quality-screen")[0].info()
    left = {
        m["sample"]: m["reason"] for m in info["dataset"]["manifest"] if m["split"] == "skipped"
    }
    assert set(left) == {train[0].sample_id, train[1].sample_id}
    assert "duplicate of holdout image" in left[train[0].sample_id]
    assert "low quality: dark" in left[train[1].sample_id]
    assert result["dataset"]["counts"]["skipped"] == 2
    assert info["params"]["low_quality"] == "skip"
    assert any(u.get("quality_skipped") for u in updates)
