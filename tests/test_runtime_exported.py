"""Serving on an exported runtime (LABELPILOT_RUNTIME): the same detections as PyTorch, a worker
that never imports torch, and a hot swap that brings the new version's export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from labelpilot.backends.exported_yolo import ExportedYolo
from labelpilot.backends.model_store import ModelStore, ModelVersion
from labelpilot.backends.served_model import ModelLoader
from labelpilot.backends.shapes import Prediction
from labelpilot.backends.yolo import YoloModel
from labelpilot.label_config import load
from labelpilot.trainers.export import ExportRequest, export_version
from tests.exported import holdout_zip, shapes_version
from tests.helpers import generate_images, iou, ls_box, serve_directory

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> ModelStore:
    return ModelStore(tmp_path_factory.mktemp("models") / "store", redis.Redis.from_url(redis_url))


@pytest.fixture(scope="module")
def exported(store: ModelStore, shapes_model: Path,
             tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    """A version of the shapes model with ONNX and OpenVINO exports (parity checked)."""
    holdout = holdout_zip(tmp_path_factory.mktemp("holdout"), count=24)
    version = shapes_version(store, f"rt{time.time_ns()}", shapes_model, holdout)
    for fmt in ("onnx", "openvino"):
        export_version(store, ExportRequest(version.key, version.version, fmt))
    return version


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Square and non-square shape images, as the torch path sees them."""
    paths = generate_images(tmp_path_factory.mktemp("images"), 8, seed=31, size=320)
    square = [cv2.imread(str(g.path)) for g in paths]
    return [*square, cv2.resize(square[0], (320, 200)), cv2.resize(square[1], (180, 300))]


def _rows(prediction: Prediction) -> list[tuple[str, tuple[float, float, float, float]]]:
    return sorted(((i.class_name, (i.box.x1, i.box.y1, i.box.x2, i.box.y2))
                   for i in prediction.instances if i.box is not None),
                  key=lambda row: (row[0], row[1]))


def assert_same_detections(ours: list[Prediction], torch_: list[Prediction],
                           min_iou: float = 0.99) -> None:
    """The same boxes (class, IoU >= `min_iou`), counts within 1 % over all images."""
    total = sum(len(p.instances) for p in torch_)
    assert total > 0
    missing = 0
    for a, b in zip(ours, torch_, strict=True):
        left = _rows(a)
        for name, box in _rows(b):
            match = next((row for row in left if row[0] == name and iou(row[1], box) >= min_iou),
                         None)
            if match is None:
                missing += 1
            else:
                left.remove(match)
        missing += len(left)
    assert missing <= 0.01 * total, f"{missing} of {total} detections differ"


def test_exported_runtimes_find_what_torch_finds(exported: ModelVersion, images):
    torch_model = YoloModel(str(exported.weights), device="cpu", max_batch=4)
    for runtime in ("onnx", "openvino"):
        model = ModelLoader(runtime, "cpu", max_batch=4)(str(exported.weights))
        assert isinstance(model, ExportedYolo) and model.runtime == runtime
        assert model.class_names == torch_model.class_names
        for chunk in (images[:4], images[4:8], images[8:], images[2:10]):  # shared / mixed sizes
            assert_same_detections(model.predict(chunk), torch_model.predict(chunk))
    ours, theirs = model.raw_boxes(images[:2], conf=0.25), torch_model.raw_boxes(images[:2],
                                                                               conf=0.25)
    assert [len(b) for b in ours] == [len(b) for b in theirs]  # what the video trackers take
    for a, b in zip(ours, theirs, strict=True):
        order_a, order_b = np.lexsort(a.xyxy.T[::-1]), np.lexsort(b.xyxy.T[::-1])
        assert np.allclose(a.xyxy[order_a], b.xyxy[order_b], atol=1.0)


def test_torch_and_versions_without_an_export_serve_torch(exported: ModelVersion,
                                                          shapes_model: Path):
    assert isinstance(ModelLoader("torch", "cpu")(str(exported.weights)), YoloModel)
    assert isinstance(ModelLoader("onnx", "cpu")(str(shapes_model)), YoloModel)
    fastest = ModelLoader("auto", "cpu")(str(exported.weights))
    assert isinstance(fastest, ExportedYolo)  # timed both at load, kept one


_WORKER = """
import json, os, sys
import redis
from labelpilot.app import create_app
from labelpilot.settings import load_settings
from labelpilot.label_config import load
app = create_app(load_settings(), redis.Redis.from_url(os.environ["REDIS_URL"]))
client = app.test_client()
body = json.loads(sys.argv[1])
answer = client.post("/predict", json=body)
app.extensions["labelpilot.predictor"].close()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"status": answer.status_code, "answer": answer.json,
                  "torch": "torch" in sys.modules, "ultralytics": "ultralytics" in sys.modules,
                  "vmhwm_mb": int(hwm) / 1024}))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Path]]]:
    directory = tmp_path_factory.mktemp("served")
    generated = generate_images(directory, 4, seed=41, size=256)
    with serve_directory(directory) as url:
        yield url, [g.path for g in generated]


def test_an_onnx_worker_serves_predict_without_importing_torch(
        store: ModelStore, exported: ModelVersion, served, redis_url: str):
    url, paths = served
    project = 9000 + time.time_ns() % 1000
    key = f"ls-{project}-label"
    version = shapes_version(store, key, exported.weights, holdout=None)
    export = exported.exports()["onnx"]
    store.write_export(version, "onnx", export.path, export.info)
    store.promote(key, version.version)
    body = {"tasks": [{"id": i, "data": {"image": f"{url}/{p.name}"}} for i, p in enumerate(paths)],
            "project": f"{project}.1700000000", "label_config": load("detection_shapes")}
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_url,
           "MODEL_DIR": str(store.root.parent), "LABELPILOT_RUNTIME": "onnx",
           "LABELPILOT_MODEL_DETECT": str(version.weights),  # preloaded: its export too
           "LABELPILOT_ALLOWED_HOSTS": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(body)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 200, report
    assert not report["torch"] and not report["ultralytics"], "an ONNX worker imported torch"
    results = report["answer"]["results"]
    assert all(r["model_version"] == version.model_version for r in results)
    torch_preds = YoloModel(str(exported.weights), device="cpu").predict(
        [cv2.imread(str(p)) for p in paths])
    served_preds = [Prediction(256, 256, tuple(
        _instance(region) for region in r["result"])) for r in results]
    assert_same_detections(served_preds, torch_preds, min_iou=0.98)  # LS rounds percentages


def _instance(region: dict):  # type: ignore[no-untyped-def]
    from labelpilot.backends.shapes import BBox, Instance

    return Instance(region["value"]["rectanglelabels"][0].lower(), region.get("score", 1.0),
                    box=BBox(*ls_box(region)))


def test_hot_swap_to_a_version_with_an_export_serves_the_export(
        store: ModelStore, exported: ModelVersion, shapes_model: Path, redis_url: str):
    from labelpilot.runtime import build_predictor
    from labelpilot.settings import load_settings

    key = f"swap{time.time_ns()}"
    plain = shapes_version(store, key, shapes_model, holdout=None)
    store.promote(key, plain.version)
    settings = load_settings(model_dir=str(store.root.parent), runtime="onnx", watch=False)
    predictor = build_predictor(settings, store)
    try:
        first = predictor.current.get(key)
        assert first is not None
        assert isinstance(predictor.models.get(str(first.weights)), YoloModel)  # no export
        with_export = shapes_version(store, key, shapes_model, holdout=None)
        export = exported.exports()["onnx"]
        store.write_export(with_export, "onnx", export.path, export.info)
        store.promote(key, with_export.version)
        assert predictor.current.refresh(key)  # what the listener does on the message
        now = predictor.current.get(key)
        assert now is not None and now.version == with_export.version
        served = predictor.models.get(str(now.weights))
        assert isinstance(served, ExportedYolo) and served.runtime == "onnx"
    finally:
        predictor.close()
