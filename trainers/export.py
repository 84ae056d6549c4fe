"""`labelpilot models export`: a store version → ONNX / OpenVINO with ultralytics' exporter,
kept only when it scores like the PyTorch model on the version's holdout.

The export is dynamic (batch and input size), so the served runtime letterboxes exactly as
ultralytics does for the `.pt` (`backends.exported_yolo`). Parity: every holdout metric of the
task (mAP50-95 and mAP50 for detect) of the export within `tolerance` of the PyTorch model's;
otherwise `ExportRefused` with both figures and nothing is written. The files land in the store
through `ModelStore.write_export` (staging directory renamed into place).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from labelpilot.backends.exported_yolo import (
    RUNTIMES,
    ExportedYolo,
    ExportSpec,
    Runtime,
    runtime_available,
)
from labelpilot.backends.model_store import ExportRecord, ModelStore, ModelVersion
from labelpilot.backends.offline import import_ultralytics
from labelpilot.backends.tasks import task_spec
from labelpilot.trainers.holdout import Holdout, unpack_holdout
from labelpilot.trainers.yolo_train import _device

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 0.005  # mAP (or accuracy) points the export may differ by


class ExportError(ValueError):
    """The export cannot be made as asked; the message says what to fix."""


class ExportRefused(ExportError):
    """The export did not score like the PyTorch model on the holdout (figures in the text)."""

    def __init__(self, message: str, parity: dict[str, Any]):
        super().__init__(message)
        self.parity = parity


@dataclass(frozen=True)
class ExportRequest:
    key: str
    version: str
    format: str  # "onnx" | "openvino"
    data: Path | None = None  # a data yaml to check parity on, for versions without a holdout
    split: str = "val"  # of `data`
    imgsz: int | None = None  # input size of the export (default: the version's training size)
    tolerance: float = PARITY_TOLERANCE
    device: str = "cpu"


def check_request(store: ModelStore, request: ExportRequest) -> ModelVersion:
    """The version to export, or `ExportError` for what cannot work (before any work)."""
    if request.format not in RUNTIMES:
        raise ExportError(f"unknown export format '{request.format}': use one of "
                          f"{', '.join(RUNTIMES)}")
    missing = runtime_available(request.format)
    if missing:
        raise ExportError(f"this machine cannot run a {request.format} export: {missing}")
    try:
        version = store.get(request.key, request.version)
    except KeyError as exc:
        known = ", ".join(v.version for v in store.versions(request.key)) or "none"
        raise ExportError(f"{exc.args[0]} (versions of '{request.key}': {known}; "
                          "see `labelpilot models list`)") from exc
    if request.imgsz is not None and (request.imgsz < 32 or request.imgsz % 32):
        raise ExportError(f"--imgsz {request.imgsz}: must be a multiple of 32, at least 32")
    if request.data is None and not version.holdout.is_file():
        raise ExportError(
            f"{version.model_version} has no holdout kept (versions trained before exports "
            "keep none): pass --data <data.yaml> with labelled images to check parity on")
    if request.data is not None and not request.data.is_file():
        raise ExportError(f"--data {request.data}: no such data yaml")
    return version


def export_version(store: ModelStore, request: ExportRequest) -> ExportRecord:
    """Export, check parity, record; `ExportError` / `ExportRefused` leave the store as it was."""
    version = check_request(store, request)
    info = version.info()
    task = str(info.get("task") or "detect")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"export-{request.key}-") as tmp:
        work = Path(tmp)
        try:
            holdout = (Holdout(request.data.resolve(), request.split, -1) if request.data
                       else unpack_holdout(version.holdout, work / "holdout"))
        except (ValueError, OSError) as exc:  # a corrupt or unsafe holdout.zip
            raise ExportError(f"the holdout of {version.model_version} cannot be read "
                              f"({exc}): give --data to check parity on") from exc
        weights = work / "model" / "weights.pt"
        weights.parent.mkdir()
        shutil.copyfile(version.weights, weights)
        exported, meta = _export(weights, request)
        torch_metrics = _evaluate(str(weights), holdout, task, meta["trained_imgsz"],
                                  request.device, work / "runs")
        export_metrics = _evaluate(str(exported), holdout, task, meta["imgsz"], request.device,
                                   work / "runs")
        parity = {"holdout_images": holdout.images, "data": "holdout.zip" if not request.data
                  else str(request.data), "torch": torch_metrics, request.format: export_metrics,
                  "tolerance": request.tolerance}
        worst = max(abs(export_metrics[name] - torch_metrics[name]) for name in torch_metrics)
        parity["max_difference"] = worst
        if worst > request.tolerance:
            figures = ", ".join(f"{name} {torch_metrics[name]:.4f} (torch) vs "
                                f"{export_metrics[name]:.4f} ({request.format})"
                                for name in torch_metrics)
            raise ExportRefused(
                f"{version.model_version} {request.format} export refused: on the holdout "
                f"{figures}; differs by {worst:.4f} > {request.tolerance}. Nothing was "
                "written", parity)
        if task == "detect":
            _check_servable(exported, request.format, meta)
        files = work / "files"
        files.mkdir()
        if exported.is_dir():  # OpenVINO: a folder with the .xml, .bin and metadata.yaml
            shutil.copytree(exported, files, dirs_exist_ok=True)
            model_file = next(p.name for p in files.glob("*.xml"))
        else:
            shutil.copyfile(exported, files / exported.name)
            model_file = exported.name
        record = store.write_export(version, request.format, files, {
            "file": model_file, "task": task, "class_names": meta["class_names"],
            "imgsz": meta["imgsz"], "stride": meta["stride"], "dynamic": True,
            "parity": parity, "seconds": round(time.time() - started, 2)})
    return record


def _check_servable(exported: Path, fmt: str, meta: dict[str, Any]) -> None:
    """Run the export once on labelpilot's own runtime (what will serve it): an export whose
    output it cannot decode (an NMS-free model's) passes ultralytics' val but is refused here."""
    import numpy as np

    from labelpilot.backends.errors import ModelLoadError

    path = next(exported.glob("*.xml")) if exported.is_dir() else exported
    spec = ExportSpec(cast("Runtime", fmt), path, tuple(meta["class_names"]),
                      int(meta["imgsz"]), int(meta["stride"]))
    try:
        ExportedYolo(spec, max_batch=1).predict([np.zeros((64, 64, 3), np.uint8)])
    except ModelLoadError as exc:
        raise ExportError(f"the {fmt} export cannot be served: {exc}") from exc


def _export(weights: Path, request: ExportRequest) -> tuple[Path, dict[str, Any]]:
    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(weights))
    size = model.overrides.get("imgsz") or 640
    trained = int(max(size) if isinstance(size, (list, tuple)) else size)
    imgsz = request.imgsz or trained
    names = model.names
    stride = int(max(getattr(model.model, "stride", [32])))
    try:
        out = model.export(format=request.format, imgsz=imgsz, dynamic=True, simplify=True,
                           device=_device(request.device), verbose=False)
    except Exception as exc:  # ultralytics raises many kinds; all mean "could not export"
        raise ExportError(f"ultralytics could not export to {request.format}: {exc}") from exc
    return Path(out), {"class_names": [names[i] for i in sorted(names)], "imgsz": imgsz,
                       "trained_imgsz": trained, "stride": stride}


def _evaluate(model_path: str, holdout: Holdout, task: str, imgsz: int, device: str,
              runs: Path) -> dict[str, float]:
    from ultralytics import YOLO

    model = YOLO(model_path, task=task)
    try:
        results = model.val(data=str(holdout.data), split=holdout.split, imgsz=imgsz, batch=8,
                            device=_device(device), workers=0, plots=False, verbose=False,
                            save_json=False, project=str(runs), name="val")
    except Exception as exc:  # ultralytics raises many kinds: a bad data yaml, no images
        raise ExportError(f"could not evaluate {Path(model_path).name} on {holdout.data} "
                          f"(split {holdout.split}): {exc}") from exc
    values = results.results_dict
    return {name: round(float(values[key]), 6) for name, key in task_spec(task).metrics}
