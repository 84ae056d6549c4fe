"""A small detector trained from `yolo11n.yaml` on generated shapes, cached on disk.

It stands in for downloadable weights where there is no internet (tests, the offline demo):
a real ultralytics model that really finds circles, squares and triangles (mAP50 ≈ 0.75).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from trainers import synthetic
from trainers.yolo_train import train_yolo

log = logging.getLogger(__name__)
RECIPE = {"model": "yolo11n.yaml", "epochs": 20, "imgsz": 160, "batch": 8, "n_train": 120,
          "n_val": 30, "size": 160, "seed": 0}


def recipe_key() -> str:
    source = Path(synthetic.__file__).read_bytes() + repr(sorted(RECIPE.items())).encode()
    return hashlib.sha1(source).hexdigest()[:10]


def ensure_shapes_model(cache_dir: Path) -> Path:
    """Path to the trained weights; trains (~2 min on 2 CPU cores) only when not cached."""
    target = cache_dir / f"shapes-{recipe_key()}.pt"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("training the shapes demo model (%s epochs at %s px, about 2 minutes on CPU)",
             RECIPE["epochs"], RECIPE["imgsz"])
    with tempfile.TemporaryDirectory(prefix="shapes-train-") as tmp:
        work = Path(tmp)
        data = synthetic.write_detection_dataset(work / "data", int(RECIPE["n_train"]),
                                                 int(RECIPE["n_val"]), size=int(RECIPE["size"]),
                                                 seed=int(RECIPE["seed"]))
        weights = train_yolo(str(RECIPE["model"]), data, work / "train",
                             epochs=int(RECIPE["epochs"]), imgsz=int(RECIPE["imgsz"]),
                             batch=int(RECIPE["batch"]))
        partial = target.with_suffix(".partial")
        shutil.copyfile(weights, partial)
        partial.rename(target)  # atomic: a killed run never leaves a half-written model
    return target
