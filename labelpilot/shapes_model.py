"""A small detector trained from `yolo11n.yaml` on generated shapes, cached on disk.

It stands in for downloadable weights where there is no internet (tests, the offline demo):
a real ultralytics model that really finds circles, squares and triangles (mAP50 ≈ 0.99).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path

from labelpilot import synthetic
from labelpilot.trainers.yolo_train import train_yolo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    model: str = "yolo11n.yaml"
    epochs: int = 20
    imgsz: int = 160
    batch: int = 8
    n_train: int = 120
    n_val: int = 30
    size: int = 160
    seed: int = 0


RECIPE = Recipe()
# A deliberately under-trained starting point, for tests where retraining must improve a model.
WEAK_RECIPE = Recipe(epochs=10)
# The offline demo's starting point: visibly imperfect, so a handful of labels improves it.
DEMO_RECIPE = Recipe(epochs=9)


def recipe_key(recipe: Recipe = RECIPE) -> str:
    source = Path(synthetic.__file__).read_bytes() + repr(astuple(recipe)).encode()
    return hashlib.sha1(source).hexdigest()[:10]


def ensure_shapes_model(cache_dir: Path, recipe: Recipe = RECIPE) -> Path:
    """Path to the trained weights; trains (~2.5 min on 2 CPU cores) only when not cached."""
    target = cache_dir / f"shapes-{recipe_key(recipe)}.pt"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("training the shapes model (%d epochs at %d px, about 2.5 minutes on CPU)",
             recipe.epochs, recipe.imgsz)
    with tempfile.TemporaryDirectory(prefix="shapes-train-") as tmp:
        work = Path(tmp)
        data = synthetic.write_detection_dataset(work / "data", recipe.n_train, recipe.n_val,
                                                 size=recipe.size, seed=recipe.seed)
        weights = train_yolo(recipe.model, data, work / "train", epochs=recipe.epochs,
                             imgsz=recipe.imgsz, batch=recipe.batch, seed=recipe.seed)
        partial = target.with_suffix(".partial")
        shutil.copyfile(weights, partial)
        partial.rename(target)  # atomic: a killed run never leaves a half-written model
    return target
