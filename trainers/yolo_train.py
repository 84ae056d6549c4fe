"""ultralytics training and evaluation with the settings that keep it offline on CPU."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from backends.device import default_device
from backends.offline import import_ultralytics


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


def evaluate_yolo(weights: str, data_yaml: Path, *, imgsz: int, task: str,
                  class_names: tuple[str, ...]) -> dict[str, float] | None:
    """mAP50-95 / mAP50 on the yaml's val split; None when the model's classes differ."""
    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO(weights)
    names = tuple(str(model.names[i]).lower() for i in sorted(model.names))
    if names != tuple(n.lower() for n in class_names):
        return None
    results = model.val(data=str(data_yaml), imgsz=imgsz, batch=8, device=_device(),
                        workers=0, plots=False, verbose=False, save_json=False)
    suffix = "(M)" if task == "segment" else "(B)"
    values = results.results_dict
    return {"map50_95": float(values[f"metrics/mAP50-95{suffix}"]),
            "map50": float(values[f"metrics/mAP50{suffix}"])}
