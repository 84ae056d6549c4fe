"""ultralytics training and evaluation with the settings that keep it offline on CPU."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from labelpilot.backends.device import select_device
from labelpilot.backends.offline import import_ultralytics
from labelpilot.backends.tasks import TASKS, task_spec


def _device(preferred: str) -> str:
    """ultralytics' device argument: ``cpu`` or a CUDA index (`select_device` says which)."""
    device = select_device(preferred)
    return "cpu" if device == "cpu" else device.split(":")[-1]


def train_yolo(model: str, data_yaml: Path, out_dir: Path, *, epochs: int, imgsz: int,
               batch: int = 16, seed: int = 0, device: str = "",
               callbacks: Mapping[str, Callable[[Any], None]] | None = None,
               **overrides: Any) -> Path:
    """Train `model` (a .yaml to start from scratch, or weights); returns the best weights.
    `device`: ``cpu``, ``cuda:0``, ... (empty: CUDA when present, else CPU)."""
    import_ultralytics()
    from ultralytics import YOLO

    params: dict[str, Any] = dict(
        data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed,
        device=_device(device), workers=0, amp=False, plots=False, verbose=False,
        project=str(out_dir.resolve()), name="run", exist_ok=True, deterministic=True,
    )
    params.update(overrides)
    trainer_model = YOLO(model)
    for event, callback in (callbacks or {}).items():
        trainer_model.add_callback(event, callback)
    trainer_model.train(**params)
    best = out_dir / "run" / "weights" / "best.pt"
    if not best.exists():
        best = out_dir / "run" / "weights" / "last.pt"
    final = out_dir / "model.pt"
    shutil.copyfile(best, final)
    return final


def evaluate_yolo(weights: str, data: Path, *, imgsz: int, task: str,
                  class_names: tuple[str, ...], split: str = "val",
                  keypoint_count: int = 0, device: str = "") -> dict[str, float] | None:
    """Metrics on `data`'s `split`; None when the model's classes differ from `class_names`
    (or, for pose, its keypoints per object from `keypoint_count`): not comparable.

    detect/obb: box mAP; segment: mask mAP; pose: keypoint mAP (box mAP as `box_*`);
    classify: top-1/top-5 accuracy (`TaskSpec.metrics`). `primary_metric` picks the one the
    promotion gate uses.
    """
    spec = task_spec(task)
    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO(weights)
    if task == "pose":
        kpt_shape = (getattr(model.model, "yaml", None) or {}).get("kpt_shape") or [0]
        if int(kpt_shape[0]) != keypoint_count:
            return None
    names = tuple(str(model.names[i]).lower() for i in sorted(model.names))
    if names != tuple(n.lower() for n in class_names):
        return None
    results = model.val(data=str(data), split=split, imgsz=imgsz, batch=8, device=_device(device),
                        workers=0, plots=False, verbose=False, save_json=False)
    values = results.results_dict
    return {name: float(values[key]) for name, key in spec.metrics}


_PRIMARY = tuple(dict.fromkeys(spec.primary_metric for spec in TASKS.values()))
_FLOOR = tuple(dict.fromkeys(spec.floor_metric for spec in TASKS.values()))


def primary_metric(metrics: dict[str, float]) -> tuple[str, float]:
    """The metric a version is judged by: its task's primary metric (`TaskSpec.metrics`),
    mAP50-95 of the task's output or top-1 accuracy."""
    for name in _PRIMARY:
        if name in metrics:
            return name, metrics[name]
    raise KeyError(f"no {' or '.join(_PRIMARY)} in {sorted(metrics)}")


def floor_metric(metrics: dict[str, float]) -> tuple[str, float]:
    """The metric a first version must clear a floor on (`TaskSpec.floor_metric`): mAP50 of
    the task's output or top-1 accuracy; else the primary metric (stricter than mAP50)."""
    for name in _FLOOR:
        if name in metrics:
            return name, metrics[name]
    return primary_metric(metrics)
