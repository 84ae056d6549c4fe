"""A version's holdout, kept beside its weights (``holdout.zip``) so that later checks — an
export's parity — run on exactly the images the version was judged by.

The zip holds the holdout split of the built dataset with a data yaml (detect / segment / pose /
obb: ``images/holdout``, ``labels/holdout``, ``holdout.yaml``; classify: ``test/<class>/`` with
empty train / val class folders), and ``holdout.json`` saying what `data=` and `split=` are.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from labelpilot.trainers.dataset import BuiltDataset

_MANIFEST = "holdout.json"


@dataclass(frozen=True)
class Holdout:
    data: Path  # what ultralytics' `data=` gets
    split: str  # … with this `split=`
    images: int


def pack_holdout(dataset: BuiltDataset, target: Path) -> Path:
    """Write the holdout of `dataset` to the zip `target`."""
    root = dataset.root
    classify = dataset.holdout_data == root  # the folder layout: data= is the directory
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:  # images: compressed
        if classify:
            for name in dataset.class_names:
                for split in ("train", "val"):
                    archive.writestr(f"{split}/{name}/", "")
            members = sorted(p for p in (root / "test").rglob("*") if p.is_file())
            data = "."
        else:
            members = sorted(p for split in ("images", "labels")
                             for p in (root / split / "holdout").rglob("*") if p.is_file())
            yaml_text = dataset.holdout_data.read_text()
            yaml_text = re.sub(r"^path: .*$", "path: .", yaml_text, count=1, flags=re.M)
            yaml_text = re.sub(r"^train: .*$", "train: images/holdout", yaml_text, count=1,
                               flags=re.M)
            archive.writestr("holdout.yaml", yaml_text)
            data = "holdout.yaml"
        for path in members:
            archive.write(path, path.relative_to(root).as_posix())
        archive.writestr(_MANIFEST, json.dumps({
            "data": data, "split": dataset.holdout_split,
            "images": dataset.counts.get("holdout", 0)}))
    return target


def unpack_holdout(archive_path: Path, directory: Path) -> Holdout:
    """Extract a `pack_holdout` zip into `directory`; the data yaml points there."""
    with zipfile.ZipFile(archive_path) as archive:
        for member in archive.namelist():  # no absolute or parent paths out of `directory`
            if member.startswith("/") or ".." in Path(member).parts:
                raise ValueError(f"{archive_path}: unsafe member {member!r}")
        archive.extractall(directory)
    manifest = json.loads((directory / _MANIFEST).read_text())
    data = directory / manifest["data"]
    if data.is_file():
        text = re.sub(r"^path: .*$", f"path: {directory.resolve()}", data.read_text(),
                      count=1, flags=re.M)
        data.write_text(text)
    return Holdout(data.resolve(), str(manifest["split"]), int(manifest["images"]))
