"""CVAT pieces without a server: encodings, tracker, CVAT → training conversion, and the
cvat-sdk function modules checked with cvat-sdk's / cvat-cli's own code."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest
from cvat_sdk import masks, models

from labelpilot.adapters.cvat import annotations, tracker
from labelpilot.adapters.cvat.rle import decode_shape_rle, encode_detector_bitmap, encode_shape_rle
from labelpilot.adapters.cvat.spec import COCO_KEYPOINTS, model_labels, nuclio_spec
from labelpilot.synthetic import CLASSES
from tests.helpers import generate_images, huge_png, iou


def random_masks(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        mask = np.zeros((37, 53), bool)
        for _ in range(rng.integers(1, 4)):
            x, y = rng.integers(0, 50), rng.integers(0, 34)
            mask[y:y + rng.integers(1, 15), x:x + rng.integers(1, 20)] = True
        mask[rng.integers(0, 37), rng.integers(0, 53)] ^= True
        out.append(mask)
    out.append(np.ones((5, 7), bool))  # starts with a set pixel: a leading zero-length run
    return out


@pytest.mark.parametrize("mask", random_masks(30), ids=lambda m: f"{m.sum()}px")
def test_shape_rle_is_cvat_sdks_encoding_and_decodes_back(mask):
    ours = encode_shape_rle(mask)
    assert ours == masks.encode_mask(mask)  # cvat-sdk's encoder (what CVAT stores)
    height, width = mask.shape
    assert np.array_equal(masks.decode_mask(ours, image_width=width, image_height=height), mask)
    assert np.array_equal(decode_shape_rle(ours, width, height), mask)


def test_empty_masks_encode_to_nothing_and_bad_rle_is_refused():
    assert encode_shape_rle(np.zeros((4, 4), bool)) is None
    assert encode_detector_bitmap(np.zeros((4, 4), bool)) is None
    with pytest.raises(ValueError, match="box"):
        decode_shape_rle([1, 2, 0, 0, 9, 9], 4, 4)
    with pytest.raises(ValueError, match="cover"):
        decode_shape_rle([1, 2, 0, 0, 1, 1], 4, 4)


def test_detector_bitmap_is_what_cvat_run_length_encodes():
    mask = random_masks(1, seed=3)[0]
    encoded = encode_detector_bitmap(mask)
    assert encoded is not None
    *flat, x1, y1, x2, y2 = encoded
    # CVAT: mask_to_rle(cut_points) over the crop, then the inclusive box appended
    crop = np.asarray(flat, dtype=bool).reshape(y2 - y1 + 1, x2 - x1 + 1)
    full = np.zeros_like(mask)
    full[y1:y2 + 1, x1:x2 + 1] = crop
    assert np.array_equal(full, mask) and set(flat) <= {0, 1}


def test_label_specs_per_task():
    detect = json.loads(nuclio_spec(model_labels("detect", CLASSES)))
    assert [(x["id"], x["name"], x["type"]) for x in detect] == [
        (0, "circle", "rectangle"), (1, "square", "rectangle"), (2, "triangle", "rectangle")]
    assert json.loads(nuclio_spec(model_labels("segment", ["a"])))[0]["type"] == "mask"
    assert json.loads(nuclio_spec(model_labels("classify", ["a"])))[0]["type"] == "tag"
    (person,) = json.loads(nuclio_spec(model_labels("pose", ["person"], 17)))
    assert person["type"] == "skeleton"
    assert [s["name"] for s in person["sublabels"]] == list(COCO_KEYPOINTS)
    assert person["svg"].count("<circle") == 17 and 'data-label-name="nose"' in person["svg"]
    (thing,) = json.loads(nuclio_spec(model_labels("pose", ["thing"], 3)))
    assert [s["name"] for s in thing["sublabels"]] == ["1", "2", "3"]
    assert 'data-node-from="1" data-node-to="2"' in thing["svg"]


# ---------------------------------------------------------------- tracker


def frame_with_square(x: int, y: int, size: int = 40, seed: int = 1) -> np.ndarray:
    """Textured background, a textured square at (x, y): what a tracker sees in a video."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (160, 200, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 0)
    patch = np.random.default_rng(99).integers(0, 255, (size, size, 3), dtype=np.uint8)
    image[y:y + size, x:x + size] = patch
    return image


@pytest.mark.parametrize("shape", [
    tracker.TrackedShape("rectangle", [30, 40, 70, 80]),
    tracker.TrackedShape("polygon", [30, 40, 70, 40, 50, 80]),
    tracker.TrackedShape("mask", encode_shape_rle(
        np.pad(np.ones((40, 40), bool), ((40, 80), (30, 130)))) or []),
], ids=["rectangle", "polygon", "mask"])
def test_tracker_follows_a_moving_object_with_a_json_state(shape):
    state = tracker.init_state(frame_with_square(30, 40), shape)
    state = json.loads(json.dumps(state))  # CVAT round-trips it as JSON
    assert len(json.dumps(state)) < 8000
    found, state = tracker.track(frame_with_square(41, 33), state)
    assert found is not None and found.type == shape.type
    before, after = tracker.shape_box(shape), tracker.shape_box(found)
    assert after[0] - before[0] == pytest.approx(11, abs=1.01)
    assert after[1] - before[1] == pytest.approx(-7, abs=1.01)
    found2, _ = tracker.track(frame_with_square(50, 30), json.loads(json.dumps(state)))
    assert found2 is not None
    assert tracker.shape_box(found2)[0] - before[0] == pytest.approx(20, abs=1.01)
    if shape.type == "mask":
        assert found.points[:-4] == shape.points[:-4]  # same bitmap, moved box
        decode_shape_rle(found.points, 200, 160)


def test_tracker_reports_lost_objects_and_refuses_foreign_states():
    shape = tracker.TrackedShape("rectangle", [30, 40, 70, 80])
    state = tracker.init_state(frame_with_square(30, 40), shape)
    blank = np.full((160, 200, 3), 128, np.uint8)
    found, _ = tracker.track(blank, state)
    assert found is None
    with pytest.raises(tracker.TrackingError, match="not made by this tracker"):
        tracker.track(blank, {"kind": "other"})
    with pytest.raises(tracker.TrackingError, match="frame is"):
        tracker.track(np.zeros((10, 10, 3), np.uint8), state)
    with pytest.raises(tracker.TrackingError, match="ellipse"):
        tracker.init_state(blank, tracker.TrackedShape("ellipse", [1, 2, 3, 4]))


def frame_with_flat_square(x: int, y: int, textured: bool, size: int = 40) -> np.ndarray:
    """A flat-coloured square (no texture inside) on a textured or a flat background."""
    image = frame_with_square(0, 0, size=1) if textured else np.full((160, 200, 3), 90,
                                                                     np.uint8)
    image[y:y + size, x:x + size] = (40, 180, 220)
    return image


@pytest.mark.parametrize("textured", [True, False], ids=["textured-background", "flat"])
def test_tracker_follows_a_flat_coloured_object_without_jumping(textured):
    """Inside a flat object TM_CCOEFF_NORMED is 1.0 everywhere: the context around it must
    place it, and it must not jump to the search window's corner."""
    shape = tracker.TrackedShape("rectangle", [30, 40, 70, 80])
    state = tracker.init_state(frame_with_flat_square(30, 40, textured), shape)
    for x, y in ((41, 33), (50, 30), (50, 30), (44, 38)):
        found, state = tracker.track(frame_with_flat_square(x, y, textured),
                                     json.loads(json.dumps(state)))
        assert found is not None
        assert found.points == pytest.approx([x, y, x + 40, y + 40], abs=1.01)


def test_tracker_keeps_a_shape_whose_template_has_no_contrast_where_it_is():
    flat = np.full((160, 200, 3), 90, np.uint8)
    shape = tracker.TrackedShape("rectangle", [30, 40, 70, 80])
    found, _ = tracker.track(flat, tracker.init_state(flat, shape))
    assert found is not None and found.points == pytest.approx(shape.points, abs=0.01)


def frame_with_scaled_object(cx: float, cy: float, size: int) -> np.ndarray:
    """Textured background, a smoothly textured object of `size` px centred at (cx, cy)."""
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(60, 200, (240, 320, 3), dtype=np.uint8), (5, 5), 0)
    base = np.random.default_rng(98).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    patch = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
    x, y = round(cx - size / 2), round(cy - size / 2)
    image[y:y + size, x:x + size] = patch
    return image


@pytest.mark.parametrize("growth", [1.12, 1 / 1.12], ids=["growing", "shrinking"])
@pytest.mark.parametrize("kind", ["rectangle", "polygon", "mask"])
def test_tracker_follows_a_growing_or_shrinking_object(growth, kind):
    size, cx, cy = 60.0, 150.0, 120.0
    x1, y1 = round(cx - size / 2), round(cy - size / 2)
    box = [x1, y1, x1 + 60, y1 + 60]
    bitmap = np.zeros((240, 320), bool)
    bitmap[y1:y1 + 60, x1:x1 + 60] = True
    shape = {"rectangle": tracker.TrackedShape("rectangle", [float(v) for v in box]),
             "polygon": tracker.TrackedShape("polygon", [box[0], box[1], box[2], box[1],
                                                         box[2], box[3], box[0], box[3]]),
             "mask": tracker.TrackedShape("mask", encode_shape_rle(bitmap) or [])}[kind]
    state = tracker.init_state(frame_with_scaled_object(cx, cy, 60), shape)
    for step in range(1, 5):
        size *= growth
        cx += 4
        found, state = tracker.track(frame_with_scaled_object(cx, cy, round(size)),
                                     json.loads(json.dumps(state)))
        assert found is not None and found.type == kind
        bx1, by1, bx2, by2 = tracker.shape_box(found)
        assert bx2 - bx1 == pytest.approx(size, rel=0.08), f"step {step}"
        assert by2 - by1 == pytest.approx(size, rel=0.08), f"step {step}"
        assert ((bx1 + bx2) / 2, (by1 + by2) / 2) == pytest.approx((cx, cy), abs=3)


def test_tracker_refuses_a_forged_state_with_a_huge_template_before_decoding():
    import base64
    import time

    frame = frame_with_square(30, 40)
    state = tracker.init_state(frame, tracker.TrackedShape("rectangle", [30, 40, 70, 80]))
    state["template"] = base64.b64encode(huge_png(20_000, 20_000)).decode()
    started = time.perf_counter()
    with pytest.raises(tracker.TrackingError, match="template is unusable.*pixels"):
        tracker.track(frame, state)
    assert time.perf_counter() - started < 0.5


# ---------------------------------------------------------------- CVAT → samples


def cvat_labels() -> list[models.Label]:
    """A CVAT project's labels as the API returns them (cvat-sdk models)."""
    return [
        models.Label(id=11, name="circle", type="rectangle", attributes=[], sublabels=[]),
        models.Label(id=12, name="square", type="any", attributes=[], sublabels=[]),
        models.Label(id=13, name="blob", type="mask", attributes=[], sublabels=[]),
        models.Label(id=14, name="person", type="skeleton", attributes=[], sublabels=[
            models.Sublabel(id=21, name="head", type="points", attributes=[]),
            models.Sublabel(id=22, name="foot", type="points", attributes=[])]),
        models.Label(id=15, name="outdoor", type="tag", attributes=[], sublabels=[]),
    ]


def shape(frame: int, label_id: int, kind: str, points: list[float],
          **extra) -> models.LabeledShape:
    return models.LabeledShape(type=models.ShapeType(kind), occluded=False, z_order=0,
                               points=[float(p) for p in points], frame=frame,
                               label_id=label_id, group=0, source="manual", attributes=[],
                               **extra)


def test_cvat_shapes_become_instances():
    labels = annotations.label_infos(cvat_labels())
    blob = np.zeros((100, 120), bool)
    blob[20:40, 30:70] = True
    data = models.LabeledData(version=1, tags=[
        models.LabeledImage(frame=0, label_id=15, group=0, source="manual", attributes=[])],
        shapes=[
            shape(0, 11, "rectangle", [10, 20, 50, 60]),
            shape(0, 12, "rectangle", [60, 20, 100, 40], rotation=90.0),
            shape(0, 12, "polygon", [1, 1, 9, 1, 5, 8]),
            shape(0, 13, "mask", masks.encode_mask(blob)),
            shape(0, 14, "skeleton", [], elements=[
                models.SubLabeledShape(type=models.ShapeType("points"), occluded=False,
                                       outside=False, z_order=0, points=[40.0, 10.0], frame=0,
                                       label_id=21, group=0, source="manual", attributes=[]),
                models.SubLabeledShape(type=models.ShapeType("points"), occluded=False,
                                       outside=True, z_order=0, points=[44.0, 90.0], frame=0,
                                       label_id=22, group=0, source="manual", attributes=[])]),
            shape(0, 11, "points", [3, 3]),  # not trainable: skipped
        ],
        tracks=[models.LabeledTrack(frame=1, label_id=11, group=0, source="manual",
                                    attributes=[], shapes=[
            models.TrackedShape(type=models.ShapeType("rectangle"), occluded=False,
                                outside=False, z_order=0, points=[5.0, 5.0, 25.0, 25.0],
                                frame=1, attributes=[]),
            models.TrackedShape(type=models.ShapeType("rectangle"), occluded=False,
                                outside=True, z_order=0, points=[6.0, 6.0, 26.0, 26.0],
                                frame=2, attributes=[])])])
    frames = annotations.by_frame(data)
    assert sorted(frames) == [0, 1]  # the outside keyframe (frame 2) adds nothing
    instances, tags = annotations.frame_labels(frames[0], labels, 120, 100)
    assert tags == ("outdoor",)
    rect, rotated, poly, mask, skeleton = instances
    assert (rect.class_name, rect.box) == ("circle", annotations.BBox(10, 20, 50, 60))
    assert rotated.rotated is not None and rotated.rotated.angle == pytest.approx(np.pi / 2)
    assert (rotated.rotated.cx, rotated.rotated.cy) == (80, 30)
    assert rotated.box is not None and rotated.box.x1 == pytest.approx(70)  # 40x20 turned
    assert poly.polygon == ((1, 1), (9, 1), (5, 8)) and poly.box == annotations.BBox(1, 1, 9, 8)
    assert np.array_equal(mask.mask, blob) and mask.box == annotations.BBox(30, 20, 70, 40)
    assert mask.polygon and len(mask.polygon) >= 4
    assert skeleton.keypoints is not None
    assert [(k.index, k.x, k.y, k.score) for k in skeleton.keypoints] == [
        (0, 40, 10, 1.0), (1, 44, 90, 0.0)]  # index = sublabel order, outside → score 0
    (tracked,), _ = annotations.frame_labels(frames[1], labels, 120, 100)
    assert tracked.box == annotations.BBox(5, 5, 25, 25)
    assert annotations.choose_task(instances, 0) == "segment"
    assert annotations.class_names_for("detect", labels) == ("circle", "square", "blob")
    assert annotations.class_names_for("pose", labels) == ("person",)
    assert annotations.keypoint_layout(labels) == ("head", "foot")


def test_conversion_accepts_the_json_form_too():
    labels = annotations.label_infos([label.to_dict() for label in cvat_labels()])
    data = models.LabeledData(version=1, tags=[], tracks=[],
                              shapes=[shape(3, 11, "rectangle", [1, 2, 3, 4])]).to_dict()
    frames = annotations.by_frame(json.loads(json.dumps(data, default=str)))
    (instance,), _ = annotations.frame_labels(frames[3], labels, 10, 10)
    assert instance.box == annotations.BBox(1, 2, 3, 4)


# ---------------------------------------------------------------- cvat-sdk function modules


def task_labels() -> list[models.Label]:
    """The labels of a CVAT task the detector is run on (ids differ from the function's)."""
    return [models.Label(id=100 + i, name=n, type="any", attributes=[], sublabels=[])
            for i, n in enumerate(CLASSES)]


def test_detection_module_passes_cvat_sdks_driver_checks(shapes_model, tmp_path):
    from cvat_cli._internal.common import FunctionLoader
    from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl

    function = FunctionLoader("labelpilot.adapters.cvat.functions.detection", None,
                              {"model": str(shapes_model)}).load()  # what cvat-cli does
    import cvat_sdk.auto_annotation as cvataa

    assert isinstance(function.spec, cvataa.DetectionFunctionSpec)
    assert [label.name for label in function.spec.labels] == list(CLASSES)
    (image,) = generate_images(tmp_path, 1, seed=21)
    context = _DetectionFunctionContextImpl(frame_name="x.png", conf_threshold=0.3)
    shapes = function.detect(context, PIL.Image.open(image.path))
    mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, task_labels(),
                               allow_unmatched_labels=False, conv_mask_to_poly=False)
    tags, remapped = mapper.validate_and_remap(shapes, 7)  # raises BadFunctionError if wrong
    assert tags == [] and len(remapped) == len(image.boxes)
    by_id = {100 + i: n for i, n in enumerate(CLASSES)}
    for truth in image.boxes:
        assert any(by_id[s.label_id] == truth.class_name and s.frame == 7 and
                   iou(tuple(s.points), (truth.x1, truth.y1, truth.x2, truth.y2)) > 0.6
                   for s in remapped)
    strict = _DetectionFunctionContextImpl(frame_name="x.png", conf_threshold=0.999)
    assert len(function.detect(strict, PIL.Image.open(image.path))) < len(image.boxes)


def test_interaction_module_with_real_sam_through_the_agent_worker():
    """Random-weight MobileSAM (mask content is noise), through cvat-cli's agent worker."""
    from cvat_cli._internal import agent_driver
    from cvat_cli._internal.agent_driver_interaction import (
        AgentInteractionFunctionDriver,
        _InteractionPromptsImpl,
        _worker_job_interact,
        _worker_job_interact_from_cache,
    )
    from cvat_cli._internal.common import FunctionLoader

    function = FunctionLoader("labelpilot.adapters.cvat.functions.interaction", None,
                              {"model": "random:mobile_sam"}).load()
    assert AgentInteractionFunctionDriver.get_remote_function_fields(function.spec) == {
        "min_pos_points": 0, "min_neg_points": 0, "startswith_box_optional": True}
    AgentInteractionFunctionDriver.init_worker(None)
    agent_driver.set_worker_current_function(function)
    image = PIL.Image.fromarray(frame_with_square(30, 40)[:, :, ::-1].copy())
    prompts = _InteractionPromptsImpl(pos_points=((50.0, 60.0),), neg_points=((5.0, 5.0),),
                                      bounding_box=((30.0, 40.0), (70.0, 80.0)))
    shapes = _worker_job_interact(("task", 1), image, prompts)
    again = _worker_job_interact_from_cache(("task", 1), prompts)
    assert again is not None and len(again) == len(shapes) <= 1
    for result in shapes:
        assert result.type == "mask" and result.attributes[0].spec_id == 0
        assert 0 <= float(result.attributes[0].value) <= 1
        mask = masks.decode_mask(result.points, image_width=200, image_height=160)
        assert encode_shape_rle(mask) == [int(p) for p in result.points]


def test_tracking_module_through_the_agent_worker():
    import cvat_sdk.auto_annotation as cvataa
    from cvat_cli._internal import agent_driver
    from cvat_cli._internal.agent_driver_tracking import (
        AgentTrackingFunctionDriver,
        _worker_job_init_tracking,
        _worker_job_track,
    )
    from cvat_cli._internal.common import FunctionLoader

    function = FunctionLoader("labelpilot.adapters.cvat.functions.tracking", None, {}).load()
    assert AgentTrackingFunctionDriver.get_remote_function_fields(function.spec) == {
        "supported_shape_types": ["mask", "polygon", "rectangle"]}
    AgentTrackingFunctionDriver.init_worker(lambda: uuid.uuid4().hex)
    agent_driver.set_worker_current_function(function)

    def pil(x: int, y: int) -> PIL.Image.Image:
        return PIL.Image.fromarray(frame_with_square(x, y)[:, :, ::-1].copy())

    states = _worker_job_init_tracking(
        5, pil(30, 40), [cvataa.TrackableShape(type="rectangle", points=[30, 40, 70, 80])])
    (moved,) = _worker_job_track(5, pil(38, 46), states)
    assert moved is not None and moved.type == "rectangle"
    assert moved.points == pytest.approx([38, 46, 78, 86], abs=1.01)
    (moved,) = _worker_job_track(5, pil(45, 50), states)  # the state was updated in place
    assert moved is not None and moved.points == pytest.approx([45, 50, 85, 90], abs=1.01)


def test_snapshot_from_cvat_models_becomes_samples(tmp_path: Path):
    from labelpilot.adapters.cvat.training import snapshot_samples

    write_snapshot(tmp_path, generate_images(tmp_path / "img", 4, seed=5), completed_extra=True)
    samples, _ = snapshot_samples(tmp_path)
    assert len(samples) == 5  # 4 labelled frames + 1 unlabelled frame of a completed job
    assert samples[-1].instances == ()
    assert {i.class_name for s in samples for i in s.instances} <= set(CLASSES)
    assert samples[0].provenance["task"] == "77"


def write_snapshot(root: Path, images, completed_extra: bool = False) -> Path:
    """What `export_snapshot` writes, built from cvat-sdk models (as if pulled from CVAT)."""
    labels = [models.Label(id=100 + i, name=n, type="rectangle", attributes=[], sublabels=[])
              for i, n in enumerate(CLASSES)]
    task = root / "tasks" / "77"
    (task / "frames").mkdir(parents=True, exist_ok=True)
    shapes, entries = [], []
    for index, image in enumerate(images):
        shapes += [shape(index, 100 + CLASSES.index(b.class_name), "rectangle",
                         [b.x1, b.y1, b.x2, b.y2]) for b in image.boxes]
        target = task / "frames" / f"{index}.png"
        target.write_bytes(image.path.read_bytes())
        entries.append({"index": index, "name": image.path.name, "file": f"frames/{index}.png",
                        "width": image.size, "height": image.size, "completed": False})
    if completed_extra:
        blank = np.full((images[0].size, images[0].size, 3), 128, np.uint8)
        cv2.imwrite(str(task / "frames" / "99.png"), blank)
        entries.append({"index": 99, "name": "blank.png", "file": "frames/99.png",
                        "width": images[0].size, "height": images[0].size, "completed": True})
    data = models.LabeledData(version=3, tags=[], tracks=[], shapes=shapes)
    (root / "labels.json").write_text(json.dumps([x.to_dict() for x in labels], default=str))
    (task / "annotations.json").write_text(json.dumps(data.to_dict(), default=str))
    (task / "frames.json").write_text(json.dumps(entries))
    (root / "source.json").write_text(json.dumps({"kind": "task", "id": 77}))
    return root


# ---------------------------------------------------------------- every model task's output


def prediction_for(task: str):  # type: ignore[no-untyped-def]
    """What `YoloModel.predict` returns for each task (our own types; coordinates in px)."""
    from labelpilot.backends.shapes import (
        BBox,
        ClassScore,
        Instance,
        Keypoint,
        Prediction,
        RotatedBox,
    )

    if task == "detect":
        return Prediction(120, 100, (Instance("a", 0.9, box=BBox(10, 20, 50, 60)),))
    if task == "obb":
        return Prediction(120, 100, (Instance("a", 0.8, rotated=RotatedBox(60, 50, 40, 20,
                                                                            np.pi / 6)),))
    if task == "segment":
        polygon = ((20.0, 20.0), (60.0, 20.0), (60.0, 50.0), (20.0, 50.0))
        return Prediction(120, 100, (Instance("a", 0.7, box=BBox(20, 20, 60, 50),
                                              polygon=polygon),))
    if task == "pose":
        points = (Keypoint(0, 30, 30, 0.9), Keypoint(1, 40, 70, 0.2), Keypoint(2, 50, 35, 0.8))
        return Prediction(120, 100, (Instance("a", 0.9, box=BBox(25, 25, 55, 75),
                                              keypoints=points),))
    return Prediction(120, 100, classes=(ClassScore("b", 0.8), ClassScore("a", 0.2)))


@pytest.mark.parametrize("task", ["detect", "obb", "segment", "pose", "classify"])
def test_every_task_renders_for_nuclio_and_passes_cvat_sdks_checks(task):
    import cvat_sdk.auto_annotation as cvataa
    from cvat_sdk.auto_annotation.driver import _AnnotationMapper

    from labelpilot.adapters.cvat.detector import Detection, nuclio_shapes
    from labelpilot.adapters.cvat.functions.detection import sdk_label, sdk_shapes

    labels = model_labels(task, ["a", "b"], 3)
    detection = Detection(prediction_for(task), (100, 200), 0.25)  # found in a roi at +100,+200
    (item,) = nuclio_shapes(detection, labels)
    if task in ("detect", "pose"):
        assert item["confidence"] == "0.9000" and item["label"] == "a"
    if task == "detect":
        assert item["points"] == [110, 220, 150, 260] and item["rotation"] == 0
    elif task == "obb":
        assert item["type"] == "rectangle" and item["rotation"] == pytest.approx(30)
        assert item["points"] == [140, 240, 180, 260]  # the unrotated box around the centre
    elif task == "segment":
        *bitmap, x1, y1, x2, y2 = item["mask"]
        assert (x1, y1, x2, y2) == (120, 220, 160, 250) and len(bitmap) == 41 * 31
        assert set(bitmap) == {1} and len(item["points"]) == 8
    elif task == "pose":
        assert item["type"] == "skeleton"
        assert [(e["label"], e["outside"]) for e in item["elements"]] == [
            ("1", 0), ("2", 1), ("3", 0)]
        assert item["elements"][0]["points"] == [130, 230]
    else:
        assert item == {"label": "b", "type": "tag", "confidence": "0.8000",
                        "attributes": [{"name": "score", "value": "0.8000"}]}
    spec = cvataa.DetectionFunctionSpec(labels=[sdk_label(label, True) for label in labels])
    ds_type = {"segment": "any", "pose": "skeleton"}.get(task, "any")
    dataset = [models.Label(id=50 + i, name=n, type=ds_type, attributes=[
        models.Attribute(id=70 + i, name="score", input_type="text", mutable=False, values=[],
                         default_value="")],
        sublabels=[models.Sublabel(id=60 + k, name=str(k + 1), type="points", attributes=[])
                   for k in range(3)] if task == "pose" else []) for i, n in enumerate("ab")]
    for to_polygon in (False, True):
        shapes = sdk_shapes(Detection(prediction_for(task), (0, 0), 0.25), labels, True,
                            to_polygon)
        mapper = _AnnotationMapper(logging.getLogger("t"), spec.labels, dataset,
                                   allow_unmatched_labels=False, conv_mask_to_poly=to_polygon)
        tags, remapped = mapper.validate_and_remap(shapes, 2)
        assert len(tags) + len(remapped) == 1
        if task == "segment":
            assert remapped[0].type.value == ("polygon" if to_polygon else "mask")


@pytest.mark.parametrize("task", ["detect", "obb", "segment", "pose", "classify"])
def test_nuclio_and_cvat_sdk_serialisers_say_the_same(task):
    """One conversion, two serialisers: for the same prediction (found in a roi at +100,+200)
    both carry the same labels, scores, coordinates, rotation, keypoints and mask."""
    from labelpilot.adapters.cvat.shapes import cvat_shapes, nuclio_json, sdk_requests

    labels = model_labels(task, ["a", "b"], 3)
    items = cvat_shapes(prediction_for(task), labels, 0.25, (100, 200))
    nuclio = nuclio_json(items)
    sdk, sdk_polygons = sdk_requests(items, True), sdk_requests(items, True, to_polygon=True)
    assert len(nuclio) == len(sdk) == len(sdk_polygons) == 1
    for ours, req, poly in zip(nuclio, sdk, sdk_polygons, strict=True):
        assert ours["label"] == labels[req.label_id].name
        assert ours["confidence"] == ours["attributes"][0]["value"] == req.attributes[0].value
        if ours["type"] == "tag":
            assert isinstance(req, models.LabeledImageRequest)
            continue
        assert req.score == pytest.approx(float(ours["confidence"]), abs=1e-4)
        if ours["type"] == "rectangle":
            assert req.type.value == "rectangle"
            assert ours["points"] == [round(v, 2) for v in req.points]
            assert ours["rotation"] == round(req.get("rotation", 0), 4)
        elif ours["type"] == "skeleton":
            assert req.type.value == "skeleton"
            assert [(e["label"], e["outside"], e["points"]) for e in ours["elements"]] == [
                (labels[0].keypoints[e.label_id], int(e.outside), [round(v, 2) for v in e.points])
                for e in req.elements]
        else:
            assert (ours["type"], req.type.value, poly.type.value) == ("mask", "mask", "polygon")
            *bitmap, x1, y1, x2, y2 = ours["mask"]
            full = decode_shape_rle(req.points, 300, 300)
            assert np.array_equal(full[y1:y2 + 1, x1:x2 + 1].ravel(), np.array(bitmap, bool))
            assert full.sum() == sum(bitmap)
            assert ours["points"] == [round(v, 2) for v in poly.points]


def test_connect_cvat_prints_cvat_settings_and_a_valid_webhook():
    from labelpilot.adapters.cvat.client import CvatAccess
    from labelpilot.cvat_commands import _webhook_body, connect_cvat_command

    text = connect_cvat_command("http://labelpilot:8070", CvatAccess(), 4, None, "s3")
    assert text.count("CVAT_NUCLIO_INVOKE_METHOD: 'dashboard'") == 2  # server and worker
    assert "CVAT_NUCLIO_HOST: 'labelpilot'" in text and "CVAT_NUCLIO_PORT: '8070'" in text
    assert "http://labelpilot:8070/cvat/webhook" in text and '"project_id": 4' in text
    # the body CVAT's API takes: cvat-sdk's model checks field types and enum values
    request = models.WebhookWriteRequest(**_webhook_body("http://x/cvat/webhook", 4, "s3"))
    assert [e.value for e in request.events] == ["update:job", "update:task"]
    assert request.type.value == "project"


class FakeTask:
    """The cvat-sdk Task proxy methods `export_snapshot` uses, answering with cvat-sdk models."""

    def __init__(self, task_id: int, images,  # type: ignore[no-untyped-def]
                 completed: tuple[int, int] | None = None):
        self.id, self.images, self.completed = task_id, images, completed

    def get_labels(self) -> list[models.Label]:
        return [models.Label(id=100 + i, name=n, type="rectangle", attributes=[],
                             sublabels=[]) for i, n in enumerate(CLASSES)]

    def get_annotations(self) -> models.LabeledData:
        first = self.images[0]
        return models.LabeledData(version=1, tags=[], tracks=[], shapes=[
            shape(0, 100 + CLASSES.index(b.class_name), "rectangle", [b.x1, b.y1, b.x2, b.y2])
            for b in first.boxes])

    def get_meta(self):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        frames = [models.FrameMeta._from_openapi_data(  # as the API client builds it
            name=i.path.name, width=i.size, height=i.size, related_files=0,
            has_related_context=False) for i in self.images]
        return SimpleNamespace(frames=frames, size=len(frames), deleted_frames=[2])

    def get_jobs(self):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        if self.completed is None:
            return [SimpleNamespace(state="in progress", start_frame=0, stop_frame=3)]
        return [SimpleNamespace(state=models.JobStatus("completed"),
                                start_frame=self.completed[0], stop_frame=self.completed[1])]

    def get_frame(self, index: int, quality: str | None = None):  # type: ignore[no-untyped-def]
        import io

        assert quality == "original"
        return io.BytesIO(self.images[index].path.read_bytes())


def test_export_snapshot_pulls_labelled_and_completed_frames(tmp_path):
    from types import SimpleNamespace

    from labelpilot.adapters.cvat.training import export_snapshot, snapshot_samples

    images = generate_images(tmp_path / "img", 4, seed=8)
    tasks = [FakeTask(5, images, completed=(1, 3)), FakeTask(6, images)]
    client = SimpleNamespace(
        tasks=SimpleNamespace(retrieve=lambda i: tasks[0]),
        projects=SimpleNamespace(retrieve=lambda i: SimpleNamespace(
            get_labels=tasks[0].get_labels, get_tasks=lambda: tasks)))
    export_snapshot(client, "project", 9, tmp_path / "snap")
    samples, _ = snapshot_samples(tmp_path / "snap")
    # task 5: frame 0 (labelled) + frames 1 and 3 of the completed job (2 is deleted);
    # task 6: frame 0 only (its job is still in progress)
    assert [s.sample_id for s in samples] == ["cvat-t5-f0", "cvat-t5-f1", "cvat-t5-f3",
                                              "cvat-t6-f0"]
    assert len(samples[0].instances) == len(images[0].boxes) and samples[1].instances == ()
    assert samples[0].image.read_bytes()[:4] == b"\x89PNG"


def test_a_frame_whose_image_fails_is_left_out_and_named(tmp_path):
    """CVAT's source: a labelled frame that does not decode does not fail the job; it is
    returned as skipped, with the reason, for the version's manifest."""
    import io
    from types import SimpleNamespace

    from labelpilot.adapters.cvat.training import CvatSource

    class BrokenFrame(FakeTask):
        def get_frame(self, index: int, quality: str | None = None):  # type: ignore[no-untyped-def]
            data = super().get_frame(index, quality).read()
            return io.BytesIO(data[:80] if index == 1 else data)

    images = generate_images(tmp_path / "img", 4, seed=9)
    task = BrokenFrame(5, images, completed=(0, 3))
    client = SimpleNamespace(tasks=SimpleNamespace(retrieve=lambda i: task))
    pulled = CvatSource("task", 5, lambda: client).write_samples(tmp_path / "job", lambda _: None)
    assert [s.sample_id for s in pulled.samples] == ["cvat-t5-f0", "cvat-t5-f3"]
    (skipped,) = pulled.skipped
    assert skipped.sample_id == "cvat-t5-f1" and "corrupt or truncated" in skipped.reason
    assert skipped.provenance == {"task": "5", "frame": "1", "name": images[1].path.name}


@pytest.mark.parametrize("name", ["detection_shapes", "pose_coco"])
def test_cvat_project_label_files_are_current_and_valid(name):
    from labelpilot.adapters.cvat.spec import project_template
    from labelpilot.label_config import DIR

    labels = json.loads((DIR / f"cvat_{name}.json").read_text())
    assert labels == project_template(name)  # regenerate the file when the spec changes
    for label in labels:  # what CVAT's API accepts for project creation
        models.PatchedLabelRequest(**{**label, "sublabels": [
            models.SublabelRequest(**s) for s in label.get("sublabels", [])],
            "attributes": [models.AttributeRequest(**a) for a in label["attributes"]]})


def test_train_request_follows_the_labels(tmp_path, redis_url):
    import redis

    from labelpilot.adapters.cvat.training import train_spec
    from labelpilot.backends.model_ref import ModelLocator
    from labelpilot.backends.model_store import ModelStore
    from labelpilot.backends.shapes import BBox, Instance, Keypoint
    from labelpilot.trainers.job import train_request
    from labelpilot.trainers.pipeline import TrainParams
    from labelpilot.trainers.samples import Sample

    labels = annotations.label_infos(cvat_labels())
    person = Instance("person", 1.0, box=BBox(1, 1, 9, 9),
                      keypoints=(Keypoint(0, 2, 2, 1.0), Keypoint(1, 8, 8, 0.0)))
    samples = [Sample(f"s{i}", tmp_path / "x.png", 10, 10, instances=(person,))
               for i in range(3)]
    store = ModelStore(tmp_path / "store", redis.Redis.from_url(redis_url))
    key = f"cvat-task-{uuid.uuid4().hex}"
    locator = ModelLocator(tmp_path / "models", download=False)
    request = train_request(train_spec(key, samples, labels), samples, store, TrainParams(),
                            {"event": "t"}, locator)
    assert (request.task, request.class_names, request.keypoint_count) == ("pose", ("person",), 2)
    assert request.trigger["keypoint_names"] == ["head", "foot"]  # kept for the served spec
    assert request.base_model.endswith(".yaml")
    tags = [Sample(f"t{i}", tmp_path / "x.png", 10, 10, classes=("outdoor",))
            for i in range(2)]
    classify = train_request(train_spec(uuid.uuid4().hex, tags, labels), tags, store,
                             TrainParams(), {}, locator)
    assert classify.task == "classify"
    assert classify.class_names == ("square", "outdoor")  # labels of type "any" and "tag"
    with pytest.raises(ValueError, match="nothing|no rectangles"):
        train_request(train_spec("k", [], labels), [], store, TrainParams(), {}, locator)



def write_pose_snapshot(root: Path, images) -> Path:  # type: ignore[no-untyped-def]
    """A CVAT task whose triangles are labelled as 3-point skeletons (top, right, left)."""
    labels = [models.Label(id=7, name="tri", type="skeleton", attributes=[], sublabels=[
        models.Sublabel(id=71 + i, name=n, type="points", attributes=[])
        for i, n in enumerate(("top", "right", "left"))])]
    task = root / "tasks" / "78"
    (task / "frames").mkdir(parents=True, exist_ok=True)

    def element(sublabel: int, x: float, y: float) -> models.SubLabeledShape:
        return models.SubLabeledShape(type=models.ShapeType("points"), occluded=False,
                                      outside=False, z_order=0, points=[float(x), float(y)],
                                      frame=0, label_id=sublabel, group=0, source="manual",
                                      attributes=[])

    shapes, entries = [], []
    for index, image in enumerate(images):
        shapes += [shape(index, 7, "skeleton", [], elements=[
            element(71, (b.x1 + b.x2) / 2, b.y1), element(72, b.x2, b.y2),
            element(73, b.x1, b.y2)]) for b in image.boxes if b.class_name == "triangle"]
        (task / "frames" / f"{index}.png").write_bytes(image.path.read_bytes())
        entries.append({"index": index, "name": image.path.name, "file": f"frames/{index}.png",
                        "width": image.size, "height": image.size, "completed": True})
    data = models.LabeledData(version=1, tags=[], tracks=[], shapes=shapes)
    (root / "labels.json").write_text(json.dumps([x.to_dict() for x in labels], default=str))
    (task / "annotations.json").write_text(json.dumps(data.to_dict(), default=str))
    (task / "frames.json").write_text(json.dumps(entries))
    return root


def test_forged_tracker_states_and_rois_are_refused_not_crashed() -> None:
    """A state whose object is larger than its own template would blow the search window up
    (GBs); infinite numbers would crash the conversions: all are 400-class errors."""
    import math

    import numpy as np

    from labelpilot.adapters.cvat import tracker
    from labelpilot.adapters.cvat.detector import Roi

    frame = np.full((120, 160, 3), 90, np.uint8)
    frame[40:70, 50:90] = (20, 200, 20)
    state = tracker.init_state(frame, tracker.TrackedShape("rectangle", [50, 40, 90, 70]))
    huge = {**state, "size": [30000.0, 16000.0]}
    with pytest.raises(tracker.TrackingError, match="inconsistent"):
        tracker.track(frame, huge, tracker.TrackedShape("rectangle", [1, 1, 159, 119]))
    with pytest.raises(tracker.TrackingError, match="finite"):
        tracker.track(frame, state, tracker.TrackedShape("rectangle", [math.inf, 40, 90, 70]))
    with pytest.raises(tracker.TrackingError, match="frame"):
        tracker.track(frame, {**state, "image_size": 160}, None)
    with pytest.raises(ValueError, match="finite"):
        Roi.clipped([0, 0, math.inf, 10], 160, 120)


def test_the_agent_tracking_function_keeps_a_lost_objects_state() -> None:
    import numpy as np

    from labelpilot.adapters.cvat.functions.tracking import create

    frame = np.full((120, 160, 3), 90, np.uint8)
    frame[40:70, 50:90] = (20, 200, 20)
    function = create()

    class Shape:
        type, points = "rectangle", [50.0, 40.0, 90.0, 70.0]

    state = function.init_tracking_state(None, frame, Shape())  # type: ignore[arg-type]
    empty = np.full((120, 160, 3), 90, np.uint8)  # the object is gone: lost, state kept
    assert function.track(None, empty, state) is None  # type: ignore[arg-type]
    assert state.get("kind") and state.get("points")
    assert function.track(None, frame, state) is not None  # type: ignore[arg-type]
