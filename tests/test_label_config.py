import pytest

from labelpilot.adapters.label_studio.config import (
    ConfigError,
    ControlDefaults,
    parse_label_config,
)
from labelpilot.label_config import DIR, load


def test_detection_config_maps_predicted_values_and_names_case_insensitively():
    plan = parse_label_config(load("detection"))
    (control,) = plan.controls
    assert (control.name, control.to_name, control.kind, control.image_key) == (
        "label", "image", "rectangle", "image")
    assert control.label_for("person") == "Person"
    assert control.label_for("TRUCK") == "Vehicle"
    assert control.label_for("rocket") == "Rocket"  # by its own name
    assert control.label_for("toaster") is None
    assert control.threshold == 0.25
    assert control.model_ref == "yolo11n.pt"


def test_model_path_threshold_and_obb_attributes():
    plan = parse_label_config(
        '<View><Image name="img" value="$photo"/>'
        '<RectangleLabels name="r" toName="img" model_path="my/ships.pt" model_obb="true" '
        'model_score_threshold="0.6"><Label value="Ship"/></RectangleLabels></View>')
    (control,) = plan.controls
    assert control.kind == "obb" and control.result_type == "rectanglelabels"
    assert control.model_ref == "my/ships.pt" and control.threshold == 0.6
    assert control.image_key == "photo"


def test_each_control_gets_its_model_and_keypoints_map_by_model_index():
    plan = parse_label_config(load("keypoints"))
    kinds = {c.name: c for c in plan.controls}
    assert kinds["person"].model_ref == "yolo11n-pose.pt"
    assert kinds["keypoints"].keypoint_labels[0] == "nose"
    assert kinds["keypoints"].keypoint_labels[11] == "left_hip"
    assert set(plan.by_model()) == {"yolo11n-pose.pt"}  # one model serves both controls


def test_default_model_per_task_can_be_overridden():
    defaults = ControlDefaults(models=(("segment", "/models/seg.pt"),), score_threshold=0.4)
    plan = parse_label_config(load("brush_segmentation"), defaults)
    assert plan.controls[0].model_ref == "/models/seg.pt"
    assert plan.controls[0].threshold == 0.3  # the tag's model_score_threshold wins
    bare = ('<View><Image name="image" value="$image"/><PolygonLabels name="p" toName="image">'
            '<Label value="Circle"/></PolygonLabels></View>')
    assert parse_label_config(bare, defaults).controls[0].threshold == 0.4
    assert parse_label_config(bare).controls[0].threshold == 0.25
    assert parse_label_config(load("brush_segmentation")).controls[0].model_ref == (
        "yolo11n-seg.pt")


def test_smart_prompt_controls_are_not_served_in_batch():
    config = ('<View><Image name="image" value="$image"/>'
              '<BrushLabels name="tag" toName="image"><Label value="Banana"/></BrushLabels>'
              '<KeyPointLabels name="tag2" toName="image" smart="true">'
              '<Label value="Banana" smart="true"/></KeyPointLabels></View>')
    plan = parse_label_config(config)
    assert [c.name for c in plan.controls] == ["tag"]
    assert any("smart" in reason for reason in plan.ignored)


@pytest.mark.parametrize("config, fragment", [
    ("", "empty"),
    ("<View><Image name='i' value='$i'", "not valid"),
    ("<View><Text name='t' value='$t'/><Choices name='c' toName='t'><Choice value='A'/>"
     "</Choices></View>", "not attached to an Image"),
    ("<View><Image name='i' value='$i'/><TextArea name='t' toName='i'/></View>",
     "not a control type"),
])
def test_configs_with_nothing_to_serve_say_why(config, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_label_config(config)


def test_every_shipped_config_parses():
    for path in DIR.glob("*.xml"):
        assert parse_label_config(path.read_text()).controls, path.name


@pytest.mark.parametrize("attribute, fragment", [
    ('model_score_threshold="abc"', 'model_score_threshold="abc"'),
    ('model_point_threshold="1e999x"', 'model_point_threshold="1e999x"'),
])
def test_numeric_attributes_that_are_not_numbers_are_config_errors(attribute, fragment):
    """A ConfigError is the 422 of /setup and /predict (a ValueError was a 500)."""
    with pytest.raises(ConfigError, match=fragment):
        parse_label_config('<View><Image name="img" value="$photo"/><RectangleLabels name="r" '
                           f'toName="img" {attribute}><Label value="Ship"/></RectangleLabels>'
                           '</View>')
    with pytest.raises(ConfigError, match="model_index=\"x\" .* not a whole number"):
        parse_label_config('<View><Image name="img" value="$photo"/><KeyPointLabels name="k" '
                           'toName="img"><Label value="Nose" model_index="x"/></KeyPointLabels>'
                           '</View>')
