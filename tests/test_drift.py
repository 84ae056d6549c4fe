"""Drift: backbone features captured in the predict pass, the two-sample test's false-alarm and
detection rates on generated windows, degenerate windows, and the /predict observer raising a
retraining request. The model is the real shapes detector the other tests train."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from labelpilot import synthetic
from labelpilot.backends.drift import (
    STAT_NAMES,
    DriftSettings,
    Reference,
    compare,
    image_confidence,
    image_statistics,
    prediction_confidences,
)
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.observation import Observation
from labelpilot.backends.yolo import YoloModel
from labelpilot.trainers.drift_monitor import DriftObserver, drift_history, drift_status
from labelpilot.trainers.drift_reference import REFERENCE_FILE, write_reference
from labelpilot.trainers.retraining import RetrainingRequests

WINDOW = 50
REFERENCE_IMAGES = 150
Window = tuple[np.ndarray, np.ndarray, np.ndarray]


def scenes(seed: int, count: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    return [synthetic.make_image(rng, 160).image for _ in range(count)]


def darker(image: np.ndarray) -> np.ndarray:
    return (image * 0.55).astype(np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def blurred(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 2.5)


def new_background(image: np.ndarray) -> np.ndarray:
    """The gray noise behind the shapes replaced by a green-brown texture (a new site)."""
    noise = np.random.default_rng(int(image[:4, :4].sum()))
    pixels = image.astype(int)
    gray = (np.abs(pixels[..., 0] - pixels[..., 1]) < 30) & (
        np.abs(pixels[..., 1] - pixels[..., 2]) < 30
    )
    texture = np.clip(noise.normal((40, 110, 70), 25, image.shape), 0, 255).astype(np.uint8)
    out = image.copy()
    out[gray] = texture[gray]
    return out


@pytest.fixture(scope="module")
def model(shapes_model: Path) -> YoloModel:
    return YoloModel(str(shapes_model))


def describe(model: YoloModel, images: list[np.ndarray]) -> Window:
    """Statistics, backbone features and confidence per image, as the observer keeps them."""
    predictions, features = model.predict_with_features(images, conf=0.25, imgsz=160)
    stats = np.stack([image_statistics(i) for i in images])
    confidences = np.array(
        [image_confidence(prediction_confidences(p)) for p in predictions], np.float32
    )
    return stats, features, confidences


@pytest.fixture(scope="module")
def reference_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("reference")
    paths = []
    for i, image in enumerate(scenes(1, REFERENCE_IMAGES)):
        paths.append(directory / f"{i:03d}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


@pytest.fixture(scope="module")
def reference(
    shapes_model: Path, reference_images: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The reference.npz the pipeline writes after training, from the model's images."""
    files = write_reference(
        str(shapes_model), reference_images, tmp_path_factory.mktemp("ref"), imgsz=160
    )
    return files[REFERENCE_FILE]


@pytest.mark.parametrize("yaml", ["yolo11n.yaml", "yolo11n-seg.yaml", "yolo11n-cls.yaml"])
def test_backbone_features_come_from_the_predict_pass(yaml: str) -> None:
    """One pooled row per image, the same rows alone or batched, the same predictions."""
    model = YoloModel(yaml, max_batch=2)
    images = scenes(7, 3)
    predictions, features = model.predict_with_features(images, imgsz=96)
    assert features.shape == (3, 256) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.std(axis=0).max() > 0
    _, alone = model.predict_with_features(images[2:], imgsz=96)
    np.testing.assert_allclose(alone[0], features[2], atol=1e-3)
    assert predictions == model.predict(images, imgsz=96)


def test_reference_written_by_the_training_path(reference: Path) -> None:
    ref = Reference.load(reference)
    assert len(ref) == REFERENCE_IMAGES
    assert ref.stats.shape == (REFERENCE_IMAGES, len(STAT_NAMES))
    assert ref.features.shape == (REFERENCE_IMAGES, 256)
    assert ref.confidences.mean() > 0.5  # the trained model finds its shapes


@pytest.mark.slow
def test_false_alarm_and_detection_rates(model: YoloModel, reference: Path) -> None:
    """alpha 0.01 over 20 same-distribution windows: 0.2 false alarms expected, at most 1
    allowed (P(≥2) ≈ 1.7 % for a calibrated test); each kind of drift caught in ≥ 9 of 10."""
    ref = Reference.load(reference)
    settings = DriftSettings(alpha=0.01)
    shifts: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
        "same": None,
        "darker": darker,
        "grayscale": grayscale,
        "blurred": blurred,
        "new background": new_background,
    }
    rates: dict[str, float] = {}
    for name, shift in shifts.items():
        runs = 20 if shift is None else 10
        alarms = 0
        for k in range(runs):
            images = scenes(1000 + 97 * len(name) + k, WINDOW)
            window = describe(model, [shift(i) for i in images] if shift else images)
            alarms += compare(ref, *window, DriftSettings(alpha=settings.alpha, seed=k)).drifted
        rates[name] = alarms / runs
        print(f"drift {name}: alarm in {alarms}/{runs} windows of {WINDOW}")
    assert rates["same"] <= 1 / 20
    for name in shifts:
        if name != "same":
            assert rates[name] >= 0.9, (name, rates)


def test_degenerate_windows_neither_crash_nor_alarm(model: YoloModel, reference: Path) -> None:
    ref = Reference.load(reference)
    one = describe(model, scenes(5, 1))
    result = compare(ref, *one)
    assert not result.drifted and result.p_value is None and result.window == 1
    assert "not tested" in result.reasons[0]
    frame = darker(scenes(6, 1)[0])  # one (even odd-looking) frame sent 60 times
    same = describe(model, [frame] * 60)
    result = compare(ref, *same)
    assert not result.drifted and "only 1 distinct" in result.reasons[0]
    empty = compare(ref, np.zeros((0, len(STAT_NAMES))), None, np.zeros(0))
    assert not empty.drifted and empty.window == 0
    # a reference of identical images: every feature has zero variance
    flat = Reference(
        np.repeat(one[0], 40, axis=0), np.repeat(one[1], 40, axis=0), np.repeat(one[2], 40)
    )
    window = describe(model, scenes(8, 30))
    result = compare(flat, *window, DriftSettings(min_window=20))
    assert result.p_value is not None and np.isfinite(result.statistic or 0.0)
    # no backbone features (another runtime): the statistics alone are tested
    stats_only = compare(ref, window[0], None, window[2], DriftSettings(min_window=20))
    assert set(stats_only.groups) == {"image statistics"}


def observations(
    model: YoloModel, images: list[np.ndarray], key: str | None, model_version: str
) -> list[Observation]:
    predictions, features = model.predict_with_features(images, imgsz=160)
    return [
        Observation(
            "ls-3", key, model_version, str(i), image, 3, features[i], prediction_confidences(p)
        )
        for i, (image, p) in enumerate(zip(images, predictions, strict=True))
    ]


def test_observer_tests_windows_off_the_request_path_and_raises_one_request(
    model: YoloModel, reference: Path, shapes_model: Path, tmp_path: Path, redis_url: str
) -> None:
    connection = redis.Redis.from_url(redis_url)
    store = ModelStore(tmp_path / "store", connection)
    key = "ls-3-drift-observer"
    store.write_version(key, shapes_model, {"task": "detect"})  # v1: no reference
    version = store.write_version(
        key, shapes_model, {"task": "detect"}, extra_files={REFERENCE_FILE: reference}
    )
    queued: list[tuple[str, str, dict]] = []

    def queue_training(project: str, model_key: str, trigger: dict) -> str:
        queued.append((project, model_key, trigger))
        return f"job-{len(queued)}"

    requests = RetrainingRequests(connection, queue_training)
    observer = DriftObserver(connection, store, window=30, requests=requests)
    observer.observe(observations(model, scenes(20, 30), None, "yolo11n"))  # default weights
    observer.observe(observations(model, scenes(21, 30), key, f"{key}-v1"))  # no reference
    observer.join()
    assert drift_status(connection, key) is None and queued == []

    observer.observe(observations(model, scenes(30, 15), key, version.model_version))
    observer.join()
    assert drift_status(connection, key) is None  # half a window: nothing tested yet
    observer.observe(observations(model, scenes(31, 15), key, version.model_version))
    observer.join()
    status = drift_status(connection, key)
    assert status is not None and status["drifted"] is False, status
    assert status["window"] == 30 and status["model_version"] == version.model_version

    for batch in range(2):  # darker images: two windows drift, one request
        dark = [darker(i) for i in scenes(40 + batch, 30)]
        observer.observe(observations(model, dark, key, version.model_version))
        observer.join()
    status = drift_status(connection, key)
    assert status is not None and status["drifted"] is True and status["p_value"] < 0.01
    assert any("brightness" in r for r in status["reasons"]), status["reasons"]
    assert len(drift_history(connection, key)) == 3
    assert len(queued) == 1
    project, model_key, trigger = queued[0]
    (raised,) = [r for r in requests.list("ls-3") if r["model_key"] == key]
    assert (project, model_key) == ("ls-3", key)
    assert trigger == {"reason": "drift", "request": raised["id"], "vetting": "manual"}
    assert raised["status"] == "training" and raised["evidence"]["drifted"] is True
    assert raised["job"] == "job-1"
