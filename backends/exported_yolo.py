"""A YOLO detector exported to ONNX or OpenVINO, run without torch or ultralytics.

A worker that serves an exported model never imports torch (about 0.9 GB of its peak memory).
Pre- and post-processing follow ultralytics' own for a PyTorch model, step for step, so the
detections equal `YoloModel`'s: the same letterbox (the minimum rectangle when the images of a
call share a shape, as ultralytics does for a `.pt` or a dynamic export; the export is dynamic),
BGR → RGB / 255, best class per anchor above `conf`, class-aware greedy NMS at IoU 0.7 (the
torchvision semantics), at most 300 boxes, boxes scaled back and clipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from labelpilot.backends.errors import ModelLoadError
from labelpilot.backends.shapes import BBox, Instance, Prediction

log = logging.getLogger(__name__)
Runtime = Literal["onnx", "openvino"]
RUNTIMES: tuple[Runtime, ...] = ("onnx", "openvino")
IOU = 0.7  # ultralytics' predict default
MAX_DET = 300
_MAX_NMS = 30000
_MAX_WH = 7680  # ultralytics' per-class offset for class-aware NMS
_PAD = 114


@dataclass(frozen=True)
class ExportSpec:
    """What an export needs besides its file: recorded in the store's export.json."""

    runtime: Runtime
    path: Path  # the .onnx file, or the OpenVINO model's .xml
    class_names: tuple[str, ...]
    imgsz: int  # the square inference size the model was trained and exported at
    stride: int = 32
    task: str = "detect"


def runtime_available(runtime: str) -> str | None:
    """None when `runtime` can run here, else what to install."""
    module = {"onnx": "onnxruntime", "openvino": "openvino"}.get(runtime)
    if module is None:
        return f"unknown runtime '{runtime}' (one of: {', '.join(RUNTIMES)})"
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"the {runtime} runtime needs the '{module}' package: pip install {module}"
    return None


class ExportedYolo:
    """The serving interface of `YoloModel` (detect only) on an exported runtime.

    `max_batch`: images per runtime call. Calls are serialized by a lock (as `YoloModel`'s):
    the runtime already uses every core for one call.
    """

    def __init__(self, spec: ExportSpec, *, max_batch: int = 16, threads: int = 0,
                 weights: str = ""):
        if spec.task != "detect":
            raise ModelLoadError(f"the {spec.runtime} runtime serves detect models only, "
                                 f"not {spec.task}: use LABELPILOT_RUNTIME=torch")
        self.spec = spec
        self.weights = weights or str(spec.path)
        self.runtime: str = spec.runtime
        self.device = "cpu"
        self.task = spec.task
        self.class_names = spec.class_names
        self.keypoint_count = 0
        self._batch = max(1, max_batch)
        self._lock = threading.Lock()
        self._torch: Any = None
        self._torch_lock = threading.Lock()
        try:
            self._infer = (_onnx_session(spec.path, threads) if spec.runtime == "onnx"
                           else _openvino_model(spec.path, threads))
        except Exception as exc:
            raise ModelLoadError(f"could not load the {spec.runtime} export {spec.path}: "
                                 f"{exc}") from exc
        log.info("loaded %s export %s (%d classes)", spec.runtime, spec.path,
                 len(self.class_names))

    @property
    def ultralytics(self) -> Any:
        """The PyTorch model of the same weights, loaded (and torch imported) on first use:
        for what only ultralytics does (sahi's sliced inference wraps it, backends/slicing)."""
        with self._torch_lock:
            if self._torch is None:
                from labelpilot.backends.offline import import_ultralytics

                import_ultralytics()
                from ultralytics import YOLO

                self._torch = YOLO(self.weights)
            return self._torch

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    @property
    def max_batch(self) -> int:
        return self._batch

    def predict(self, images: Sequence[np.ndarray], *, conf: float = 0.25,
                imgsz: int | None = None) -> list[Prediction]:
        """BGR images → one `Prediction` per image, in order."""
        out: list[Prediction] = []
        for start in range(0, len(images), self._batch):
            chunk = list(images[start:start + self._batch])
            for image, rows in zip(chunk, self.detections(chunk, conf, imgsz), strict=True):
                height, width = image.shape[:2]
                out.append(Prediction(width, height, tuple(
                    Instance(self.class_names[int(r[5])], float(r[4]), box=BBox(*map(float, r[:4])))
                    for r in rows)))
        return out

    def predict_with_features(self, images: Sequence[np.ndarray], *, conf: float = 0.25,
                              imgsz: int | None = None) -> tuple[list[Prediction], np.ndarray]:
        """`predict`; no backbone features from an exported graph (no columns: the drift
        watch then uses image statistics only)."""
        return self.predict(images, conf=conf, imgsz=imgsz), np.zeros((len(images), 0),
                                                                       np.float32)

    def raw_boxes(self, images: Sequence[np.ndarray], *, conf: float) -> list[Any]:
        """ultralytics `Boxes` per image, for its trackers (video tracking imports ultralytics
        anyway)."""
        from ultralytics.engine.results import Boxes

        return [Boxes(rows, image.shape[:2]).numpy()
                for image in images for rows in self.detections([image], conf, None)]

    def detections(self, images: Sequence[np.ndarray], conf: float,
                   imgsz: int | None) -> list[np.ndarray]:
        """Per image, an (n, 6) float32 array: x1, y1, x2, y2 (pixels), score, class index."""
        if not images:
            return []
        size = imgsz or self.spec.imgsz
        same = len({image.shape for image in images}) == 1
        boxed = [letterbox(image, size, self.spec.stride, auto=same) for image in images]
        batch = np.stack(boxed)[..., ::-1].transpose(0, 3, 1, 2)  # BHWC BGR → BCHW RGB
        tensor = np.ascontiguousarray(batch, dtype=np.float32) / np.float32(255.0)
        with self._lock:
            raw = self._infer(tensor)
        if raw.ndim != 3 or raw.shape[1] != 4 + len(self.class_names):
            # e.g. an NMS-free (end-to-end) export: (images, boxes, 6) rows, not the raw head
            raise ModelLoadError(
                f"the {self.runtime} export {self.spec.path} answers {tuple(raw.shape)}, not "
                f"(images, 4 + {len(self.class_names)} classes, anchors) as a YOLO detect head "
                "does: serve this model with LABELPILOT_RUNTIME=torch")
        shape = tensor.shape[2:]
        return [scale_boxes(nms(raw[i], conf), shape, image.shape[:2])
                for i, image in enumerate(images)]


def letterbox(image: np.ndarray, size: int, stride: int, *, auto: bool) -> np.ndarray:
    """ultralytics' LetterBox (centred, scale up allowed, pad 114; `auto`: to the minimum
    rectangle that is a multiple of `stride`)."""
    height, width = image.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    dw, dh = size - new_w, size - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (width, height) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    half_w, half_h = dw / 2, dh / 2
    top, bottom = round(half_h - 0.1), round(half_h + 0.1)
    left, right = round(half_w - 0.1), round(half_w + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(_PAD, _PAD, _PAD))


def nms(output: np.ndarray, conf: float, iou: float = IOU) -> np.ndarray:
    """One image's raw head output (4 + classes, anchors) → (n, 6) rows in input pixels."""
    scores_all = output[4:]
    best = scores_all.max(0)
    keep = best > conf
    if not keep.any():
        return np.zeros((0, 6), np.float32)
    boxes = output[:4, keep].T
    classes = scores_all[:, keep].argmax(0)
    scores = best[keep]
    xyxy = np.empty_like(boxes)
    xyxy[:, :2] = boxes[:, :2] - boxes[:, 2:] / 2
    xyxy[:, 2:] = boxes[:, :2] + boxes[:, 2:] / 2
    order = np.argsort(-scores, kind="stable")[:_MAX_NMS]
    kept = _greedy_nms(xyxy[order] + classes[order, None] * _MAX_WH, scores[order], iou)
    picked = order[kept[:MAX_DET]]
    return np.concatenate([xyxy[picked], scores[picked, None],
                           classes[picked, None].astype(np.float32)], axis=1)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept, best first; `boxes` sorted by descending score. A box is dropped when its
    IoU with a kept one is above `iou` (torchvision.ops.nms)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    kept: list[int] = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        kept.append(i)
        rest = np.arange(i + 1, len(boxes))
        rest = rest[~suppressed[rest]]
        if not len(rest):
            break
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        suppressed[rest[inter / (areas[i] + areas[rest] - inter) > iou]] = True
    return np.asarray(kept, dtype=np.int64)


def scale_boxes(rows: np.ndarray, input_shape: tuple[int, ...],
                image_shape: tuple[int, ...]) -> np.ndarray:
    """Boxes from the letterboxed input back to the image, clipped (ultralytics' scale_boxes)."""
    if not len(rows):
        return rows
    in_h, in_w = input_shape[:2]
    height, width = image_shape[:2]
    gain = min(in_h / height, in_w / width)
    new_h, new_w = max(round(height * gain), 1), max(round(width * gain), 1)
    gain_y, gain_x = new_h / height, new_w / width
    pad_x, pad_y = round((in_w - new_w) / 2 - 0.1), round((in_h - new_h) / 2 - 0.1)
    out = rows.copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / gain_x).clip(0, width)
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / gain_y).clip(0, height)
    return out


def _onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting between calls: spinning threads take the CPU from the request's image
    # fetch and decode (measured: slower than torch with it, faster without)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def infer(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: batch})[0])

    return infer


def _openvino_model(path: Path, threads: int) -> Any:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def infer(batch: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer({0: batch})[compiled.output(0)])

    return infer
