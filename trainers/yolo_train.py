"""ultralytics training and evaluation with the settings that keep it offline on CPU."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from labelpilot.backends.device import default_device
from labelpilot.backends.offline import import_ultralytics


def _device() -> str:
    device = default_device()
    return "cpu" if device == "cpu" else device.split(":")[-1]


def train_yolo(model: str, data_yaml: Path, out_dir: Path, *, epochs: int, imgsz: int,
               batch: int = 16, seed: int = 0,
               callbacks: Mapping[str, Callable[[Any], None]] | None = None,
               **overrides: Any) -> Path:
    """Train `model` (a .yaml to start from scratch, or weights); returns the best weights."""
    import_ultralytics()
    from ultralytics import YOLO

    params: dict[str, Any] = dict(
        data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed,
        device=_device(), workers=0, amp=False, plots=False, verbose=False,
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


_MASK_SUFFIX = {"segment": "(M)", "pose": "(P)"}  # the metric that judges the task's output


def evaluate_yolo(weights: str, data: Path, *, imgsz: int, task: str,
                  class_names: tuple[str, ...], split: str = "val",
                  keypoint_count: int = 0) -> dict[str, float] | None:
    """Metrics on `data`'s `split`; None when the model's classes differ from `class_names`
    (or, for pose, its keypoints per object from `keypoint_count`): not comparable.

    detect/obb: box mAP; segment: mask mAP; pose: keypoint mAP (box mAP as `box_*`);
    classify: top-1/top-5 accuracy. `primary_metric` picks the one the promotion gate uses.
    """
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
    results = model.val(data=str(data), split=split, imgsz=imgsz, batch=8, device=_device(),
                        workers=0, plots=False, verbose=False, save_json=False)
    values = results.results_dict
    if task == "classify":
        return {"accuracy_top1": float(values["metrics/accuracy_top1"]),
                "accuracy_top5": float(values["metrics/accuracy_top5"])}
    suffix = _MASK_SUFFIX.get(task, "(B)")
    metrics = {"map50_95": float(values[f"metrics/mAP50-95{suffix}"]),
               "map50": float(values[f"metrics/mAP50{suffix}"])}
    if suffix != "(B)":
        metrics["box_map50_95"] = float(values["metrics/mAP50-95(B)"])
    return metrics


def primary_metric(metrics: dict[str, float]) -> tuple[str, float]:
    """The metric a version is judged by: mAP50-95 (of the task's output) or top-1 accuracy."""
    for name in ("map50_95", "accuracy_top1"):
        if name in metrics:
            return name, metrics[name]
    raise KeyError(f"no mAP50-95 or top-1 accuracy in {sorted(metrics)}")
