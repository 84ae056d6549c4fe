"""Which runtime serves a model: PyTorch (`YoloModel`) or a store version's export
(`ExportedYolo`), by LABELPILOT_RUNTIME.

The model cache is keyed by weights path; a store version's weights are
``<version>/weights.pt`` and its exports ``<version>/exports/<format>/`` (`ModelStore`), so a
promotion (a new weights path) loads the new version's export, or its torch weights when it has
none: the hot swap needs nothing else. Only `torch` and models without a usable export import
torch; an `onnx` / `openvino` worker never does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from labelpilot.backends.exported_yolo import (
    RUNTIMES,
    ExportedYolo,
    ExportSpec,
    Runtime,
    runtime_available,
)
from labelpilot.backends.model_store import ExportRecord, ModelVersion
from labelpilot.backends.shapes import Prediction

log = logging.getLogger(__name__)
RuntimeChoice = Literal["auto", "torch", "onnx", "openvino"]  # LABELPILOT_RUNTIME


class ServedModel(Protocol):
    """What the predictor and the CVAT functions use of a loaded model."""

    weights: str
    device: str
    task: str
    class_names: tuple[str, ...]
    keypoint_count: int

    def predict(self, images: Sequence[np.ndarray], *, conf: float = 0.25,
                imgsz: int | None = None) -> list[Prediction]: ...

    def predict_with_features(self, images: Sequence[np.ndarray], *, conf: float = 0.25,
                              imgsz: int | None = None
                              ) -> tuple[list[Prediction], np.ndarray]: ...

    def raw_boxes(self, images: Sequence[np.ndarray], *, conf: float) -> list[Any]: ...


@dataclass(frozen=True)
class ModelLoader:
    """The model cache's loader: weights path → the model that serves it."""

    runtime: RuntimeChoice = "auto"
    device: str = ""
    max_batch: int = 16
    threads: int = 0  # exported runtimes' threads (0: their default, one per core)
    warm_up: bool = True  # one prediction at load (preload, hot swap load in the background)

    def __call__(self, weights: str) -> ServedModel:
        model = self._load(weights)
        if self.warm_up:  # the first call's one-off setup, paid here and not by a request
            model.predict([np.full((320, 320, 3), 114, np.uint8)])
        return model

    def _load(self, weights: str) -> ServedModel:
        exports = usable_exports(weights)
        if self.runtime == "auto" and exports and _on_cpu(self.device):
            return self._fastest(weights, exports)
        if self.runtime in exports:
            return self._exported(weights, exports[self.runtime])
        if self.runtime in RUNTIMES and exports:
            log.warning("%s has no usable %s export (has: %s); serving torch weights",
                        weights, self.runtime, ", ".join(exports))
        from labelpilot.backends.yolo import YoloModel

        return YoloModel(weights, device=self.device, max_batch=self.max_batch)

    def _exported(self, weights: str, record: ExportRecord) -> ExportedYolo:
        return ExportedYolo(export_spec(record), max_batch=self.max_batch, threads=self.threads,
                            weights=weights)

    def _fastest(self, weights: str, exports: dict[str, ExportRecord]) -> ServedModel:
        timed = {fmt: self._exported(weights, record) for fmt, record in exports.items()}
        if len(timed) == 1:
            return next(iter(timed.values()))
        seconds = {fmt: time_model(model) for fmt, model in timed.items()}
        best = min(seconds, key=lambda fmt: seconds[fmt])
        log.info("%s: serving the %s export (%s)", weights, best, ", ".join(
            f"{fmt} {1000 * s:.1f} ms" for fmt, s in sorted(seconds.items())))
        return timed[best]


def usable_exports(weights: str) -> dict[str, ExportRecord]:
    """The exports beside store weights (``<version>/weights.pt``) that run on this machine
    and serve (detect), by format."""
    path = Path(weights)
    if path.name != "weights.pt" or not (path.parent / "version.json").is_file():
        return {}
    found = ModelVersion(path.parent.parent.name, path.parent.name, path.parent).exports()
    return {fmt: record for fmt, record in found.items()
            if fmt in RUNTIMES and record.info.get("task", "detect") == "detect"
            and record.model_file.exists() and runtime_available(fmt) is None}


def export_spec(record: ExportRecord) -> ExportSpec:
    info = record.info
    runtime: Runtime = "onnx" if record.format == "onnx" else "openvino"
    return ExportSpec(runtime, record.model_file, tuple(str(n) for n in info["class_names"]),
                      int(info["imgsz"]), int(info.get("stride", 32)),
                      str(info.get("task", "detect")))


def time_model(model: ServedModel, repeats: int = 3) -> float:
    """Median seconds of one 4-image call at the model's own input size (after a warm-up)."""
    side = int(getattr(getattr(model, "spec", None), "imgsz", 640))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(4)]
    model.predict(images)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(images)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _on_cpu(device: str) -> bool:
    """Whether models run on the CPU, without importing torch: a configured device, else no
    NVIDIA device node (torch picks CUDA when it sees one)."""
    if device.strip():
        return device.strip().startswith("cpu")
    return not Path("/dev/nvidia0").exists()
