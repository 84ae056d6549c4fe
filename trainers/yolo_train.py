"""ultralytics training with the settings that keep it offline and deterministic on CPU."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from backends.device import default_device
from backends.offline import import_ultralytics


def train_yolo(model: str, data_yaml: Path, out_dir: Path, *, epochs: int, imgsz: int,
               batch: int = 16, seed: int = 0, **overrides: Any) -> Path:
    """Train `model` (a .yaml to start from scratch, or weights) and return best weights' path."""
    import_ultralytics()
    from ultralytics import YOLO

    device = default_device()
    params: dict[str, Any] = dict(
        data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed,
        device="cpu" if device == "cpu" else device.split(":")[-1], workers=0, amp=False,
        plots=False, verbose=False, project=str(out_dir.resolve()), name="run", exist_ok=True,
        deterministic=True,
    )
    params.update(overrides)
    trainer_model = YOLO(model)
    trainer_model.train(**params)
    best = out_dir / "run" / "weights" / "best.pt"
    if not best.exists():
        best = out_dir / "run" / "weights" / "last.pt"
    final = out_dir / "model.pt"
    shutil.copyfile(best, final)
    return final
