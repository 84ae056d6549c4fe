import math

import numpy as np
import pytest
import torch
from label_studio_sdk.converter.brush import decode_rle
from ultralytics.utils.ops import xywhr2xyxyxyxy

from labelpilot.adapters.label_studio.config import parse_label_config
from labelpilot.adapters.label_studio.results import control_results, rectangle_value, task_score
from labelpilot.backends.geometry import rotated_corners
from labelpilot.backends.shapes import BBox, ClassScore, Instance, Keypoint, Prediction, RotatedBox

IMG = '<View><Image name="image" value="$image"/>{}</View>'


def control(xml: str):
    return parse_label_config(IMG.format(xml)).controls[0]


def test_rectangle_percent_coordinates_and_labels():
    c = control('<RectangleLabels name="r" toName="image" model_score_threshold="0.3">'
                '<Label value="Car" predicted_values="car,truck"/></RectangleLabels>')
    pred = Prediction(640, 480, (Instance("truck", 0.9, box=BBox(64, 48, 192, 240)),
                                 Instance("car", 0.2, box=BBox(0, 0, 10, 10)),
                                 Instance("dog", 0.99, box=BBox(0, 0, 10, 10))))
    (region,) = control_results(c, pred)
    assert region["type"] == "rectanglelabels" and region["from_name"] == "r"
    assert (region["original_width"], region["original_height"]) == (640, 480)
    value = dict(region["value"])
    assert value.pop("rectanglelabels") == ["Car"]
    assert value == pytest.approx({"x": 10, "y": 10, "width": 20, "height": 40, "rotation": 0})
    assert region["score"] == 0.9


@pytest.mark.parametrize("angle", [0.0, 0.3, math.pi / 4, 1.2])
def test_obb_corners_round_trip_through_ls_rotation(angle):
    """LS rotates a rectangle about its (x, y) corner; rebuild corners from LS values."""
    width, height = 800, 600
    box = RotatedBox(400, 300, 200, 80, angle)
    expected = xywhr2xyxyxyxy(torch.tensor([[400, 300, 200, 80, angle]]))[0].numpy()
    ours = np.array(rotated_corners(box))
    # same corner set as ultralytics
    assert np.allclose(sorted(map(tuple, ours)), sorted(map(tuple, expected.astype(float))),
                       atol=1e-3)
    value = rectangle_value(Instance("ship", 0.8, rotated=box), width, height)
    x, y = value["x"] * width / 100, value["y"] * height / 100
    w, h = value["width"] * width / 100, value["height"] * height / 100
    theta = math.radians(value["rotation"])
    rebuilt = [(x + dx * math.cos(theta) - dy * math.sin(theta),
                y + dx * math.sin(theta) + dy * math.cos(theta))
               for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    assert np.allclose(rebuilt, ours, atol=1e-6)


def test_polygon_points_in_percent():
    c = control('<PolygonLabels name="p" toName="image"><Label value="Person"/></PolygonLabels>')
    pred = Prediction(200, 100, (Instance("person", 0.7,
                                          polygon=((20, 10), (180, 10), (100, 90))),))
    (region,) = control_results(c, pred)
    assert region["value"]["points"] == [[10, 10], [90, 10], [50, 90]]
    assert region["value"]["closed"] is True and region["value"]["polygonlabels"] == ["Person"]


def test_brush_rle_round_trips_through_decode_rle():
    c = control('<BrushLabels name="b" toName="image"><Label value="Person"/></BrushLabels>')
    width, height = 64, 48
    polygon = ((10.0, 5.0), (50.0, 5.0), (50.0, 40.0), (10.0, 40.0))
    (region,) = control_results(c, Prediction(width, height, (Instance(
        "person", 0.8, polygon=polygon),)))
    assert region["value"]["format"] == "rle"
    decoded = np.array(decode_rle(region["value"]["rle"])).reshape(height, width, 4)[:, :, 3]
    expected = np.zeros((height, width), bool)
    expected[5:41, 10:51] = True
    assert ((decoded > 0) == expected).all()


def test_keypoints_use_model_index_and_point_threshold():
    c = control('<KeyPointLabels name="k" toName="image" model_point_threshold="0.5">'
                '<Label value="nose" model_index="0"/><Label value="hip" model_index="11"/>'
                '</KeyPointLabels>')
    kps = (Keypoint(0, 50, 25, 0.9), Keypoint(1, 1, 1, 0.99), Keypoint(11, 100, 50, 0.3))
    regions = control_results(c, Prediction(200, 100, (Instance("person", 0.8,
                                                                keypoints=kps),)))
    assert [(r["value"]["keypointlabels"], r["value"]["x"], r["value"]["y"]) for r in regions] \
        == [(["nose"], 25, 25)]


def test_choices_take_best_mapped_class_over_threshold():
    c = control('<Choices name="c" toName="image" model_score_threshold="0.2">'
                '<Choice value="Cat" predicted_values="tabby,tiger_cat"/></Choices>')
    pred = Prediction(10, 10, classes=(ClassScore("dog", 0.6), ClassScore("tabby", 0.3)))
    (region,) = control_results(c, pred)
    assert region["value"] == {"choices": ["Cat"]} and region["score"] == 0.3
    low = Prediction(10, 10, classes=(ClassScore("tabby", 0.1),))
    assert control_results(c, low) == []


def test_task_score_is_the_confidence_label_studio_sorts_ascending():
    sure = task_score([{"score": 0.95}, {"score": 0.9}])
    unsure = task_score([{"score": 0.3}, {"score": 0.5}])
    assert sure == pytest.approx(0.925) and unsure == pytest.approx(0.4)
    assert unsure < sure  # LS's uncertainty sampling serves the lowest score first
    assert task_score([]) == 0.0  # nothing found: no confidence
    assert task_score([{"id": "no score"}, {"score": 0.5}]) == 0.5
