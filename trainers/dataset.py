"""Samples → an ultralytics dataset on disk, split by a stable hash into train / val / holdout.

The holdout is fixed by each sample's id, so it never trains and stays comparable across
versions: candidate and current model are evaluated on exactly the same images.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.geometry import rotated_corners
from backends.shapes import Instance
from trainers.samples import Sample

SPLITS = ("train", "val", "holdout")


class DatasetError(ValueError):
    """Not enough (or unusable) labelled data; the message says what is missing."""


def split_of(sample_id: str, holdout_percent: int = 20, val_percent: int = 15) -> str:
    bucket = int(hashlib.sha1(sample_id.encode()).hexdigest()[:8], 16) % 100
    if bucket < holdout_percent:
        return "holdout"
    if bucket < holdout_percent + val_percent:
        return "val"
    return "train"


@dataclass(frozen=True)
class BuiltDataset:
    root: Path
    train_yaml: Path  # train + val
    holdout_yaml: Path  # holdout as its "val" split, for evaluation
    class_names: tuple[str, ...]
    counts: dict[str, int]
    manifest: list[dict[str, object]]


def _label_line(task: str, instance: Instance, index: int, w: int, h: int) -> str | None:
    if task == "detect" and instance.box is not None:
        b = instance.box
        return (f"{index} {(b.x1 + b.x2) / 2 / w:.6f} {(b.y1 + b.y2) / 2 / h:.6f} "
                f"{(b.x2 - b.x1) / w:.6f} {(b.y2 - b.y1) / h:.6f}")
    if task == "obb" and (instance.rotated is not None or instance.box is not None):
        if instance.rotated is not None:
            corners = rotated_corners(instance.rotated)
        else:
            box = instance.box
            assert box is not None
            corners = [(box.x1, box.y1), (box.x2, box.y1), (box.x2, box.y2), (box.x1, box.y2)]
        return f"{index} " + " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in corners)
    if task == "segment" and instance.polygon and len(instance.polygon) >= 3:
        return f"{index} " + " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in instance.polygon)
    return None


def build_dataset(samples: Sequence[Sample], task: str, class_names: Sequence[str],
                  root: Path) -> BuiltDataset:
    """Write images and labels for detect / obb / segment (train+val yaml, holdout yaml)."""
    if task not in ("detect", "obb", "segment"):
        raise DatasetError(f"training {task} models is not supported yet (detect, obb, segment)")
    names = tuple(class_names)
    index = {n: i for i, n in enumerate(names)}
    shutil.rmtree(root, ignore_errors=True)
    splits = {s.sample_id: split_of(s.sample_id) for s in samples}
    # keep every split non-empty: ultralytics refuses an empty val set
    for needed in ("holdout", "val"):
        if samples and needed not in splits.values():
            moved = sorted(s.sample_id for s in samples if splits[s.sample_id] == "train")
            if len(moved) > 1:
                splits[moved[0]] = needed
    counts = {split: 0 for split in SPLITS}
    manifest: list[dict[str, object]] = []
    for sample in samples:
        split = splits[sample.sample_id]
        digest = hashlib.sha1(sample.image.read_bytes()).hexdigest()
        stem = f"{sample.sample_id}{sample.image.suffix or '.png'}"
        target = root / "images" / split / stem
        lines = [line for inst in sample.instances if inst.class_name in index
                 if (line := _label_line(task, inst, index[inst.class_name], sample.width,
                                         sample.height))]
        label_dir = root / "labels" / split
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / f"{sample.sample_id}.txt").write_text("\n".join(lines) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.image, target)
        counts[split] += 1
        manifest.append({"sample": sample.sample_id, "split": split, "sha1": digest,
                         **sample.provenance})
    if counts["train"] < 2:
        raise DatasetError(f"only {counts['train']} labelled images for training (of "
                           f"{len(samples)} in all); label more tasks and train again")
    names_yaml = "names:\n" + "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(names))
    train_yaml = root / "train.yaml"
    train_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
                          f"{names_yaml}\n")
    holdout_yaml = root / "holdout.yaml"
    holdout_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\n"
                            f"val: images/holdout\n{names_yaml}\n")
    return BuiltDataset(root, train_yaml, holdout_yaml, names, counts, manifest)
