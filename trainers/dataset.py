"""Samples → an ultralytics dataset on disk, split by a stable hash into train / val / holdout.

The holdout is fixed by each sample's id, so it never trains and stays comparable across
versions: candidate and current model are evaluated on exactly the same images.
Layouts (`TaskSpec.layout`): "labels" (detect / obb / segment / pose) is `images/<split>` +
`labels/<split>` and a data yaml; "folders" (classify) is ultralytics' folder layout
`<split>/<class>/image` with the holdout as `test`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labelpilot.backends.geometry import rotated_corners
from labelpilot.backends.shapes import BBox, Instance
from labelpilot.backends.slicing import SLICED_TASKS, SliceSpec
from labelpilot.backends.tasks import TASKS
from labelpilot.trainers.samples import Sample

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
    train_data: Path  # what ultralytics' `data=` gets for training (train + val)
    holdout_data: Path  # what `data=` gets for evaluation …
    holdout_split: str  # … with this `split=` (the holdout, never trained on)
    class_names: tuple[str, ...]  # in the trained model's class order
    counts: dict[str, int]
    manifest: list[dict[str, object]]


def _box_line(instance: Instance, index: int, w: int, h: int, _keypoints: int) -> str | None:
    b = instance.box
    if b is None:
        return None
    return (f"{index} {(b.x1 + b.x2) / 2 / w:.6f} {(b.y1 + b.y2) / 2 / h:.6f} "
            f"{(b.x2 - b.x1) / w:.6f} {(b.y2 - b.y1) / h:.6f}")


def _obb_line(instance: Instance, index: int, w: int, h: int, _keypoints: int) -> str | None:
    if instance.rotated is not None:
        corners = rotated_corners(instance.rotated)
    elif (box := instance.box) is not None:
        corners = [(box.x1, box.y1), (box.x2, box.y1), (box.x2, box.y2), (box.x1, box.y2)]
    else:
        return None
    return f"{index} " + " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in corners)


def _polygon_line(instance: Instance, index: int, w: int, h: int, _keypoints: int) -> str | None:
    if not instance.polygon or len(instance.polygon) < 3:
        return None
    return f"{index} " + " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in instance.polygon)


def _pose_line(instance: Instance, index: int, w: int, h: int, keypoint_count: int) -> str | None:
    """Box + K keypoints (x y visibility); unlabelled keypoints are `0 0 0`."""
    points = {k.index: k for k in instance.keypoints or () if 0 <= k.index < keypoint_count}
    if not points:
        return None
    box = instance.box
    if box is None:  # no box drawn: the keypoints' extent, padded a little
        xs = [k.x for k in points.values()]
        ys = [k.y for k in points.values()]
        pad_x = max(0.1 * (max(xs) - min(xs)), 0.02 * w)
        pad_y = max(0.1 * (max(ys) - min(ys)), 0.02 * h)
        box = BBox(max(min(xs) - pad_x, 0), max(min(ys) - pad_y, 0),
                   min(max(xs) + pad_x, w), min(max(ys) + pad_y, h))
    parts = [f"{index} {(box.x1 + box.x2) / 2 / w:.6f} {(box.y1 + box.y2) / 2 / h:.6f} "
             f"{(box.x2 - box.x1) / w:.6f} {(box.y2 - box.y1) / h:.6f}"]
    for i in range(keypoint_count):
        k = points.get(i)
        parts.append(f"{k.x / w:.6f} {k.y / h:.6f} 2" if k else "0 0 0")
    return " ".join(parts)


# one YOLO txt label line per instance (None: the instance has nothing this task learns from),
# for each task whose layout is "labels"
_LABEL_LINES: dict[str, Callable[[Instance, int, int, int, int], str | None]] = {
    "detect": _box_line, "obb": _obb_line, "segment": _polygon_line, "pose": _pose_line,
}


def _splits(samples: Sequence[Sample]) -> dict[str, str]:
    """Sample id → split, decided for whole groups (`Sample.group`, else the sample alone) by
    `split_of(group)`: every frame of a video lands where the video does."""
    unit = {s.sample_id: s.group or s.sample_id for s in samples}
    if len(set(unit.values())) < len(SPLITS):
        unit = _blocks(unit)
    splits = {u: split_of(u) for u in sorted(set(unit.values()))}
    # keep every split non-empty: ultralytics refuses an empty val set
    for needed in ("holdout", "val"):
        if splits and needed not in splits.values():
            moved = sorted(u for u, split in splits.items() if split == "train")
            if len(moved) > 1:
                splits[moved[0]] = needed
    return {sample_id: splits[u] for sample_id, u in unit.items()}


def sample_splits(samples: Sequence[Sample]) -> dict[str, str]:
    """Sample id → "train" / "val" / "holdout", as `build_dataset` splits them."""
    return _splits(samples)


_BLOCKS = 10  # blocks a group is cut into when there are too few groups to fill the splits


def _natural(text: str) -> list[int | str]:
    """A sort key that orders the numbers inside `text` by value."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _blocks(unit: dict[str, str]) -> dict[str, str]:
    """Too few groups for three splits (one or two videos): each group of several samples is
    cut into runs of consecutive sample ids (frames in time order), and the runs are split.
    Neighbouring runs still share a boundary, but far less than frames split one by one."""
    members: dict[str, list[str]] = {}
    for sample_id, group in unit.items():
        members.setdefault(group, []).append(sample_id)
    out = dict(unit)
    for group, ids in members.items():
        if len(ids) < 2:
            continue
        ids.sort(key=_natural)  # "f12" after "f9": CVAT's frame ids are not zero-padded
        blocks = min(len(ids), _BLOCKS)
        for i, sample_id in enumerate(ids):
            out[sample_id] = f"{group}#{i * blocks // len(ids)}"
    return out


def build_dataset(samples: Sequence[Sample], task: str, class_names: Sequence[str],
                  root: Path, keypoint_count: int = 0,
                  slicing: SliceSpec | None = None) -> BuiltDataset:
    """Write images and labels for `task`; `keypoint_count` (K of kpt_shape) is for pose;
    `slicing`: a model served sliced trains on tiles of images larger than a slice
    (detect and segment; trainers/tiling.py)."""
    if task not in TASKS:
        raise DatasetError(f"cannot build a dataset for a {task} model ({', '.join(TASKS)})")
    if task == "pose" and keypoint_count < 1:
        raise DatasetError("a pose dataset needs the number of keypoints per object")
    shutil.rmtree(root, ignore_errors=True)
    if slicing is not None and task in SLICED_TASKS:
        from labelpilot.trainers.tiling import TilingError, tile_samples

        tiles = root.with_name(f"{root.name}-tiles")
        shutil.rmtree(tiles, ignore_errors=True)
        try:
            samples = tile_samples(samples, slicing, tiles)
        except TilingError as exc:
            raise DatasetError(str(exc)) from exc
    if TASKS[task].layout == "folders":
        return _build_classify(samples, class_names, root)
    label_line = _LABEL_LINES[task]
    names = tuple(class_names)
    index = {n: i for i, n in enumerate(names)}
    splits = _splits(samples)
    counts = {split: 0 for split in SPLITS}
    manifest: list[dict[str, object]] = []
    for sample in samples:
        split = splits[sample.sample_id]
        target = root / "images" / split / _file_name(sample)
        lines = [line for inst in sample.instances if inst.class_name in index
                 if (line := label_line(inst, index[inst.class_name], sample.width,
                                        sample.height, keypoint_count))]
        label_dir = root / "labels" / split
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / f"{sample.sample_id}.txt").write_text("\n".join(lines) + "\n")
        _copy(sample, target, split, counts, manifest)
    _check_counts(counts, len(samples))
    names_yaml = "names:\n" + "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(names))
    if task == "pose":  # no flip_idx: ultralytics then turns horizontal flips off
        names_yaml += f"\nkpt_shape: [{keypoint_count}, 3]"
    train_yaml = root / "train.yaml"
    train_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
                          f"{names_yaml}\n")
    holdout_yaml = root / "holdout.yaml"
    holdout_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\n"
                            f"val: images/holdout\n{names_yaml}\n")
    return BuiltDataset(root, train_yaml, holdout_yaml, "val", names, counts, manifest)


def _file_name(sample: Sample) -> str:
    return f"{sample.sample_id}{sample.image.suffix or '.png'}"


def _copy(sample: Sample, target: Path, split: str, counts: dict[str, int],
          manifest: list[dict[str, object]]) -> None:
    data = sample.image.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    counts[split] += 1
    manifest.append({"sample": sample.sample_id, "split": split,
                     "sha1": hashlib.sha1(data).hexdigest(), **sample.provenance})


def _check_counts(counts: dict[str, int], total: int) -> None:
    if counts["train"] < 2:
        raise DatasetError(f"only {counts['train']} labelled images for training (of "
                           f"{total} in all); label more tasks and train again")


_CLASSIFY_DIRS = {"train": "train", "val": "val", "holdout": "test"}


def _build_classify(samples: Sequence[Sample], class_names: Sequence[str],
                    root: Path) -> BuiltDataset:
    """ultralytics' classification layout; class order = sorted folder names, as it reads them."""
    for name in class_names:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise DatasetError(f"class name {name!r} cannot be a folder name: rename the label")
    names = tuple(sorted(class_names))
    for folder in _CLASSIFY_DIRS.values():
        for name in names:  # every class everywhere, so every split sees the same classes
            (root / folder / name).mkdir(parents=True, exist_ok=True)
    splits = _splits(samples)
    counts = {split: 0 for split in SPLITS}
    manifest: list[dict[str, object]] = []
    for sample in samples:
        label = next((c for c in sample.classes if c in names), None)
        if label is None:
            continue  # no (known) class chosen: nothing to learn from this image
        split = splits[sample.sample_id]
        target = root / _CLASSIFY_DIRS[split] / label / _file_name(sample)
        _copy(sample, target, split, counts, manifest)
    _check_counts(counts, len(samples))
    return BuiltDataset(root, root, root, "test", names, counts, manifest)
