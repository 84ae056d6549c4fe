"""Detections with their full class-score vectors plus a pooled feature vector per image.

For active learning (`labelpilot.trainers.selection`), not for serving: `YoloModel.predict`
stays the hot path. One forward pass per batch gives both: ultralytics' NMS returns the
indices of the kept anchors (`return_idxs=True`), which pick every class's score out of the
raw head output, and a forward pre-hook on the detection head captures the feature maps it
reads (the neck's P3/P4/P5 outputs), global-average-pooled and concatenated (no extra weights).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelpilot.backends.device import select_device
from labelpilot.backends.errors import ModelLoadError
from labelpilot.backends.offline import import_ultralytics
from labelpilot.backends.shapes import BBox
from labelpilot.backends.yolo import DEFAULT_MAX_BATCH


@dataclass(frozen=True)
class ScoredDetection:
    """One kept detection; `class_probs` holds every class's score (independent sigmoids, so
    they need not sum to 1); the detection's class is the argmax."""

    box: BBox
    class_probs: np.ndarray  # (nc,) float32


@dataclass(frozen=True)
class ImageScore:
    detections: tuple[ScoredDetection, ...]
    features: np.ndarray  # (D,) float32, pooled neck features of the whole image


class YoloScorer:
    """A detect model loaded once; `score` is safe to call from several threads."""

    def __init__(self, weights: str, *, device: str = "", imgsz: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH):
        import_ultralytics()
        from ultralytics import YOLO

        self.weights = weights
        self.device: str = select_device(device)
        self.imgsz = imgsz
        try:
            self._model = YOLO(weights, task=None)
        except Exception as exc:  # ultralytics raises many kinds; all mean "cannot load"
            raise ModelLoadError(f"could not load model '{weights}': {exc}") from exc
        if self._model.task != "detect":
            raise ValueError(
                f"YoloScorer needs a detect model; '{weights}' is a {self._model.task} model"
            )
        names = self._model.names
        self.class_names: tuple[str, ...] = tuple(names[i] for i in sorted(names))
        self._lock = threading.Lock()
        self._batch = max(1, max_batch)

    def score(self, images: Sequence[np.ndarray], *, conf: float = 0.05) -> list[ImageScore]:
        """One `ImageScore` per BGR image, in order; detections are those whose best class
        score is at least `conf` (after NMS, as `YoloModel.predict` keeps them)."""
        if not images:
            return []
        kwargs: dict[str, Any] = {"conf": conf, "verbose": False, "device": self.device}
        if self.imgsz:
            kwargs["imgsz"] = self.imgsz
        results: list[Any] = []
        with self._lock:
            for start in range(0, len(images), self._batch):
                chunk = list(images[start:start + self._batch])
                results.extend(self._model.predict(chunk, batch=len(chunk),
                                                   predictor=_predictor_class(), **kwargs))
        return [_image_score(r) for r in results]


def _image_score(result: Any) -> ImageScore:
    xyxy = result.boxes.xyxy.detach().cpu().numpy() if result.boxes is not None else []
    probs = result.class_probs
    detections = tuple(ScoredDetection(BBox(*map(float, b)), p) for b, p in
                       zip(xyxy, probs, strict=True))
    return ImageScore(detections, result.pooled_features)


@functools.cache
def _predictor_class() -> type:
    """A DetectionPredictor that also keeps the class-score vectors and the head's inputs
    (built on first use: ultralytics is imported only then)."""
    import_ultralytics()
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import nms, ops

    class ScoringPredictor(DetectionPredictor):
        def setup_model(self, model: Any, verbose: bool = True) -> None:
            super().setup_model(model, verbose)
            self._head_inputs: list[Any] = []
            _detect_head(self.model).register_forward_pre_hook(self._capture)

        def _capture(self, _module: Any, args: tuple[Any, ...]) -> None:
            self._head_inputs = list(args[0])  # the feature maps the head reads

        def postprocess(self, preds: Any, img: Any, orig_imgs: Any, **kwargs: Any) -> list[Any]:
            raw = preds[0] if isinstance(preds, (list, tuple)) else preds  # (B, 4 + nc, anchors)
            backend: Any = self.model  # AutoBackend, set by setup_model
            nc = len(backend.names)
            if raw.ndim != 3 or raw.shape[1] != 4 + nc:
                raise ValueError(f"unexpected detect head output of shape {tuple(raw.shape)}")
            kept, idxs = nms.non_max_suppression(
                raw, self.args.conf, self.args.iou, self.args.classes, self.args.agnostic_nms,
                max_det=self.args.max_det, nc=0, return_idxs=True,
            )
            if not isinstance(orig_imgs, list):
                orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
            pooled = _pool(self._head_inputs)
            results = self.construct_results(kept, img, orig_imgs)
            for b, (result, idx) in enumerate(zip(results, idxs, strict=True)):
                scores = raw[b, 4:4 + nc][:, idx.long().view(-1)].T  # (kept, nc)
                result.class_probs = scores.detach().float().cpu().numpy().astype(np.float32)
                result.pooled_features = pooled[b]
            return list(results)

    return ScoringPredictor


def _detect_head(backend: Any) -> Any:
    """The detection head module inside ultralytics' AutoBackend (a PyTorch model only)."""
    inner = getattr(backend, "model", None)
    layers = getattr(inner, "model", None)
    if layers is None:
        raise ValueError("YoloScorer needs PyTorch weights (.pt), not an exported model")
    return layers[-1]


def _pool(maps: Sequence[Any]) -> np.ndarray:
    """(B, sum of channels) float32: each feature map averaged over its H×W, concatenated."""
    import torch

    if not maps:
        raise ValueError("the detection head's inputs were not captured")
    pooled = torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1)
    return pooled.detach().cpu().numpy().astype(np.float32)
