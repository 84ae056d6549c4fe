"""Training on huge images: tiles with their labels, the way sliced inference sees them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from labelpilot.backends.shapes import BBox, Instance
from labelpilot.backends.slicing import SliceSpec
from labelpilot.trainers.dataset import build_dataset
from labelpilot.trainers.samples import Sample
from labelpilot.trainers.tiling import TilePolicy, clip_instance, tile_samples, training_slicing


def huge_sample(tmp_path: Path, name: str = "big", width: int = 1400,
                height: int = 700) -> Sample:
    image = np.full((height, width, 3), 120, np.uint8)
    image[10:40, 10:40] = (0, 0, 255)  # a square at the top left: the tile values show it
    path = tmp_path / f"{name}.png"
    cv2.imwrite(str(path), image)
    instances = (
        Instance("square", 1.0, box=BBox(10, 10, 40, 40)),  # inside the first tile
        Instance("circle", 1.0, box=BBox(600, 100, 680, 180)),  # across the x=640 edge
        Instance("circle", 1.0, box=BBox(636, 300, 700, 340)),  # 4 px in the first tile
        Instance("triangle", 1.0, box=BBox(300, 600, 340, 640),
                 polygon=((320, 600), (340, 640), (300, 640))),
    )
    return Sample(f"task-{name}", path, width, height, instances, provenance={"task": name})


def test_clipping_keeps_objects_mostly_inside_and_drops_remnants():
    policy = TilePolicy(min_visible=0.3, min_side=4)
    across = Instance("c", 1.0, box=BBox(600, 100, 680, 180))
    inside = clip_instance(across, (0, 0, 640, 640), policy)
    assert inside is not None and inside.box == BBox(600, 100, 640, 180)  # half of it
    assert clip_instance(across, (0, 0, 610, 640), policy) is None  # 12 % of it
    moved = clip_instance(across, (512, 0, 1152, 640), policy)
    assert moved is not None and moved.box == BBox(88, 100, 168, 180)
    triangle = Instance("t", 1.0, polygon=((320, 600), (340, 640), (300, 640)))
    clipped = clip_instance(triangle, (0, 0, 640, 630), policy)
    assert clipped is not None and clipped.polygon is not None
    assert max(y for _, y in clipped.polygon) == 630


def test_huge_images_become_tiles_with_their_labels(tmp_path: Path):
    small = Sample("task-small", tmp_path / "small.png", 320, 240)
    big = huge_sample(tmp_path)
    tiles = tile_samples([small, big], SliceSpec(640, 0.2), tmp_path / "tiles",
                         TilePolicy(empty_keep=0.0))
    assert tiles[0] is small, "images no larger than a slice stay as they are"
    by_id = {t.sample_id: t for t in tiles[1:]}
    grid = SliceSpec(640, 0.2).tiles(1400, 700)  # 3 x 2 windows of 640
    assert len(grid) == 6
    assert set(by_id) <= {f"task-big-x{x}y{y}" for x, y, _, _ in grid}
    first = by_id["task-big-x0y0"]
    assert [(i.class_name, i.box) for i in first.instances] == [
        ("square", BBox(10, 10, 40, 40)), ("circle", BBox(600, 100, 640, 180)),
        ("triangle", BBox(300, 600, 340, 640))]  # the remnant at x 636..640 is dropped
    assert set(first.instances[2].polygon or ()) == {(320, 600), (340, 640), (300, 640)}
    pixels = cv2.imread(str(first.image))
    assert pixels.shape == (640, 640, 3) and tuple(pixels[20, 20]) == (0, 0, 255)
    assert all(t.group == "task-big" and t.instances for t in tiles[1:]), \
        "no empty tiles at empty_keep=0; one split for all tiles of an image"
    assert first.provenance == {"task": "big", "tile": "0,0,640,640"}
    every = tile_samples([big], SliceSpec(640, 0.2), tmp_path / "all", TilePolicy(empty_keep=1))
    assert len(every) == 6


def test_training_dataset_is_built_from_tiles(tmp_path: Path):
    samples = [huge_sample(tmp_path, f"big{i}") for i in range(10)]
    plain = build_dataset(samples, "detect", ["circle", "square", "triangle"],
                          tmp_path / "plain")
    tiled = build_dataset(samples, "detect", ["circle", "square", "triangle"],
                          tmp_path / "tiled", slicing=SliceSpec(640, 0.2))
    assert sum(plain.counts.values()) == 10
    assert sum(tiled.counts.values()) > 20
    images = sorted((tmp_path / "tiled" / "images").rglob("*.png"))
    assert images and all(cv2.imread(str(p)).shape == (640, 640, 3) for p in images)
    label = next((tmp_path / "tiled" / "labels").rglob("task-big0-x0y0.txt")).read_text()
    # the square at 10..40 px of a 640 tile: centre 25/640, side 30/640
    assert "1 0.039062 0.039062 0.046875 0.046875" in label
    splits = {entry["sample"].split("-x")[0]: set() for entry in tiled.manifest}
    for entry in tiled.manifest:
        splits[str(entry["sample"]).split("-x")[0]].add(entry["split"])
    assert all(len(s) == 1 for s in splits.values()), "all tiles of an image in one split"


def test_training_slicing_comes_from_the_setting_or_the_served_control():
    assert training_slicing(0, 0.2, {}) is None
    assert training_slicing(800, 0.1, {"model_slice": 640}) == SliceSpec(800, 0.1)
    assert training_slicing(0, 0.2, {"model_slice": 640, "model_slice_overlap": 0.3}) == \
        SliceSpec(640, 0.3)
