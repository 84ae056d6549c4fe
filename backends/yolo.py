"""ultralytics YOLO runtime: one loaded model, any task, our own shape types out."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from labelpilot.backends.device import select_device
from labelpilot.backends.errors import ModelLoadError
from labelpilot.backends.offline import import_ultralytics
from labelpilot.backends.shapes import BBox, ClassScore, Instance, Keypoint, Prediction, RotatedBox

log = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 16  # the default of LABELPILOT_MAX_BATCH


class YoloModel:
    """A YOLO model loaded once; `predict` is safe to call from several threads.

    `device`: ``cpu``, ``cuda:0``, ... (empty: CUDA when present, else CPU); `max_batch`: images
    per model call (1: one at a time; batching measured faster on a 2-core CPU too, bench/).
    """

    def __init__(self, weights: str, *, device: str = "", task: str | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH):
        import_ultralytics()
        from ultralytics import YOLO

        self.weights = weights
        self.device: str = select_device(device)
        try:
            self._model = YOLO(weights, task=task)
        except Exception as exc:  # ultralytics raises many kinds; all mean "cannot load"
            raise ModelLoadError(
                f"could not load model '{weights}': {exc}. On a machine without internet, "
                "put the weights file in MODEL_DIR and refer to it by path"
            ) from exc
        self.task: str = str(self._model.task)
        names = self._model.names
        self.class_names: tuple[str, ...] = tuple(names[i] for i in sorted(names))
        kpt_shape = (getattr(self._model.model, "yaml", None) or {}).get("kpt_shape")
        self.keypoint_count: int = int(kpt_shape[0]) if self.task == "pose" and kpt_shape else 0
        self._lock = threading.RLock()  # _results_and_features holds it around _results
        # before the first predict: its predictor copies the model with the hook on it
        self._hook = _FeatureHook(self._model.model)
        self._batch = max(1, max_batch)
        log.info("loaded %s (task=%s, %d classes) on %s", weights, self.task,
                 len(self.class_names), self.device)

    @property
    def ultralytics(self) -> Any:
        """The loaded ultralytics YOLO object (sahi wraps it: backends/slicing.py); call it
        only while holding `lock`."""
        return self._model

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @property
    def max_batch(self) -> int:
        return self._batch

    def predict(
        self, images: Sequence[np.ndarray], *, conf: float = 0.25, imgsz: int | None = None
    ) -> list[Prediction]:
        """Run the model on BGR images; one `Prediction` per image, in order."""
        convert = _CONVERTERS[self.task]
        return [convert(result, self.class_names) for result in self._results(images, conf, imgsz)]

    def predict_with_features(
        self, images: Sequence[np.ndarray], *, conf: float = 0.25, imgsz: int | None = None
    ) -> tuple[list[Prediction], np.ndarray]:
        """`predict`, plus each image's pooled output of the last backbone layer (rows of a
        float32 array, one per image; no columns if the hook saw nothing) captured by a hook
        during the same forward pass: the drift watch gets the model's own view of an image
        without a second pass."""
        convert = _CONVERTERS[self.task]
        results, features = self._results_and_features(images, conf, imgsz)
        return [convert(result, self.class_names) for result in results], features

    def raw_boxes(self, images: Sequence[np.ndarray], *, conf: float) -> list[Any]:
        """ultralytics' own boxes (numpy) per image: what its trackers take."""
        return [(r.obb if self.task == "obb" else r.boxes).cpu().numpy()
                for r in self._results(images, conf, None)]

    def _results_and_features(self, images: Sequence[np.ndarray], conf: float,
                              imgsz: int | None) -> tuple[list[Any], np.ndarray]:
        with self._lock:  # the hook's buffer is per model: one capture at a time
            self._hook.rows, self._hook.captured = [], []
            try:
                results = self._results(images, conf, imgsz, per_chunk=self._hook.take)
            finally:
                captured, self._hook.rows = self._hook.captured, None
        features = np.concatenate(captured).astype(np.float32) if captured else None
        if features is None or len(features) != len(results):  # not captured: no columns
            features = np.zeros((len(results), 0), np.float32)
        return results, features

    def _results(self, images: Sequence[np.ndarray], conf: float, imgsz: int | None,
                 per_chunk: Callable[[int], None] | None = None) -> list[Any]:
        if not images:
            return []
        kwargs: dict[str, Any] = {"conf": conf, "verbose": False, "device": self.device}
        if imgsz:
            kwargs["imgsz"] = imgsz
        size = self._batch
        results: list[Any] = []
        with self._lock:
            for start in range(0, len(images), size):
                chunk = list(images[start:start + size])
                # ultralytics runs a list one image at a time unless `batch` says otherwise
                results.extend(self._model.predict(chunk, batch=len(chunk), **kwargs))
                if per_chunk is not None:
                    per_chunk(len(chunk))
        return results


class _FeatureHook:
    """A forward hook on the last backbone layer (SPPF / C2PSA for YOLO11) that keeps the
    global-average-pooled output per image while `rows` is a list (the model's lock held)."""

    def __init__(self, model: Any):
        self.rows: list[np.ndarray] | None = None
        self.captured: list[np.ndarray] = []
        layers: Any = getattr(model, "model", None)
        if not hasattr(layers, "__getitem__") or not hasattr(layers, "__len__"):
            self.layer = -1  # an exported runtime (ONNX, OpenVINO): no layers to hook
            return
        backbone = len((getattr(model, "yaml", None) or {}).get("backbone") or []) or len(layers)
        self.layer = min(backbone, len(layers)) - 1
        # a plain function, not a bound method: ultralytics' predictor deep-copies the model,
        # and a copied bound method would write into a copy of this object
        layers[self.layer].register_forward_hook(
            lambda module, inputs, output: self._on_forward(module, inputs, output))

    def _on_forward(self, _module: Any, _inputs: Any, output: Any) -> None:
        if self.rows is None:
            return
        tensor = output[0] if isinstance(output, (list, tuple)) else output
        if getattr(tensor, "ndim", 0) == 4:
            self.rows.append(_numpy(tensor.float().mean(dim=(2, 3))))

    def take(self, count: int) -> None:
        """A chunk of `count` images was predicted: keep the last `count` pooled rows (a
        warm-up pass on the first call also runs through the hook)."""
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, 0), np.float32)
        if self.rows is not None:
            self.rows.clear()
        if len(rows) >= count:
            self.captured.append(rows[len(rows) - count:])


def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)


def _size(result: Any) -> tuple[int, int]:
    height, width = result.orig_shape[:2]
    return int(width), int(height)


def _boxes(result: Any, names: tuple[str, ...]) -> list[Instance]:
    if result.boxes is None:
        return []
    xyxy, scores, classes = (_numpy(result.boxes.xyxy), _numpy(result.boxes.conf),
                             _numpy(result.boxes.cls).astype(int))
    return [Instance(names[c], float(s), box=BBox(*map(float, b)))
            for b, s, c in zip(xyxy, scores, classes, strict=True)]


def _detect(result: Any, names: tuple[str, ...]) -> Prediction:
    width, height = _size(result)
    return Prediction(width, height, tuple(_boxes(result, names)))


def _segment(result: Any, names: tuple[str, ...]) -> Prediction:
    width, height = _size(result)
    instances = _boxes(result, names)
    polygons = result.masks.xy if result.masks is not None else [None] * len(instances)
    out = tuple(
        Instance(i.class_name, i.score, box=i.box,
                 polygon=tuple((float(x), float(y)) for x, y in p) if p is not None else None)
        for i, p in zip(instances, polygons, strict=True)
    )
    return Prediction(width, height, out)


def _pose(result: Any, names: tuple[str, ...]) -> Prediction:
    width, height = _size(result)
    instances = _boxes(result, names)
    if result.keypoints is None or not instances:
        return Prediction(width, height, tuple(instances))
    points = _numpy(result.keypoints.xy)
    kconf = result.keypoints.conf
    confs = _numpy(kconf) if kconf is not None else np.ones(points.shape[:2])
    out = tuple(
        Instance(inst.class_name, inst.score, box=inst.box, keypoints=tuple(
            Keypoint(k, float(x), float(y), float(c))
            for k, ((x, y), c) in enumerate(zip(pts, cs, strict=True))))
        for inst, pts, cs in zip(instances, points, confs, strict=True)
    )
    return Prediction(width, height, out)


def _obb(result: Any, names: tuple[str, ...]) -> Prediction:
    width, height = _size(result)
    if result.obb is None:
        return Prediction(width, height)
    xywhr, scores, classes = (_numpy(result.obb.xywhr), _numpy(result.obb.conf),
                              _numpy(result.obb.cls).astype(int))
    out = tuple(Instance(names[c], float(s), rotated=RotatedBox(*map(float, r)))
                for r, s, c in zip(xywhr, scores, classes, strict=True))
    return Prediction(width, height, out)


def _classify(result: Any, names: tuple[str, ...]) -> Prediction:
    width, height = _size(result)
    probs = _numpy(result.probs.data)
    order = np.argsort(-probs)[:5]
    return Prediction(width, height, classes=tuple(ClassScore(names[i], float(probs[i]))
                                                   for i in order))


# ultralytics result → our shapes, per task of `labelpilot.backends.tasks.TASKS`
_CONVERTERS: dict[str, Callable[[Any, tuple[str, ...]], Prediction]] = {
    "detect": _detect, "segment": _segment, "pose": _pose, "obb": _obb, "classify": _classify,
}
