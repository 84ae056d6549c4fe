"""Model refs from label configs (`model_path`, `sam_model`) stay inside MODEL_DIR unless
ALLOW_CUSTOM_MODEL_PATH=true: anyone who edits a Label Studio project's config could otherwise
make the backend unpickle any file on its host. Refs from the admin's settings stay free."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from labelpilot.app import create_app
from labelpilot.backends.errors import ModelNotFoundError, ModelRefRefused
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.sam import SamModels, SamOptions, parse_sam_ref
from labelpilot.label_config import load
from labelpilot.settings import load_settings
from tests.helpers import generate_images, serve_directory

CONFIG = load("detection_shapes")


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A loadable-looking file outside MODEL_DIR (what an attacker would point at)."""
    path = tmp_path / "elsewhere" / "evil.pt"
    path.parent.mkdir()
    path.write_bytes(b"not weights")
    return path


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    (directory / "sub").mkdir(parents=True)
    return directory


def test_untrusted_refs_are_confined_to_model_dir(model_dir, outside):
    locator = ModelLocator(model_dir, download=True)
    (model_dir / "sub" / "mine.pt").write_bytes(b"x")
    (model_dir / "link-out.pt").symlink_to(outside)
    (model_dir / "dir-out").symlink_to(outside.parent, target_is_directory=True)
    (model_dir / "link-in.pt").symlink_to(model_dir / "sub" / "mine.pt")
    for ref in (str(outside), "../elsewhere/evil.pt", "sub/../../elsewhere/evil.pt",
                "~/evil.pt", "link-out.pt", "dir-out/evil.pt", "sub/..\\..\\evil.pt", "",
                "a\x00b.pt", "x" * 5000):
        with pytest.raises(ModelRefRefused, match="ALLOW_CUSTOM_MODEL_PATH=true"):
            locator.resolve(ref, untrusted=True)
        with pytest.raises(ModelRefRefused):
            locator.version(ref, untrusted=True)  # /setup's version check refuses it too
    assert locator.resolve("sub/mine.pt", untrusted=True) == str(model_dir / "sub" / "mine.pt")
    assert locator.resolve("link-in.pt", untrusted=True) == str(model_dir / "sub" / "mine.pt")
    # ultralytics release names stay usable (downloaded or built by ultralytics itself)
    for name in ("yolo11n.pt", "yolov8s-seg.pt", "yolo11n-pose.yaml", "rtdetr-l.pt"):
        assert locator.resolve(name, untrusted=True) == name
    # any other bare name would make ultralytics read it from its working directory
    with pytest.raises(ModelNotFoundError, match="ALLOW_CUSTOM_MODEL_PATH"):
        locator.resolve("evil.pt", untrusted=True)
    # the admin's settings are trusted, and ALLOW_CUSTOM_MODEL_PATH lifts the confinement
    assert locator.resolve(str(outside)) == str(outside)
    allowed = ModelLocator(model_dir, allow_custom_paths=True)
    assert allowed.resolve(str(outside), untrusted=True) == str(outside)
    assert allowed.resolve("link-out.pt", untrusted=True) == str(outside)


def test_sam_refs_from_configs_are_confined_too(model_dir, outside):
    locator = ModelLocator(model_dir, download=False)
    checkpoint = outside.with_name("sam_vit_b_01ec64.pth")
    checkpoint.write_bytes(b"x")
    for ref in (f"vit_b:{checkpoint}", str(checkpoint), "vit_b:../elsewhere/x.pth"):
        with pytest.raises(ModelRefRefused, match="ALLOW_CUSTOM_MODEL_PATH=true"):
            parse_sam_ref(ref, locator, untrusted=True)
        with pytest.raises(ModelRefRefused):
            SamModels(SamOptions(), locator).spec(ref, untrusted=True)
    assert parse_sam_ref(f"vit_b:{checkpoint}", locator).checkpoint == checkpoint  # trusted
    assert parse_sam_ref("random:vit_b", locator, untrusted=True).checkpoint is None
    (model_dir / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    inside = parse_sam_ref("sam_vit_b_01ec64.pth", locator, untrusted=True)
    assert inside.kind == "vit_b" and inside.checkpoint == model_dir / "sam_vit_b_01ec64.pth"
    # LABELPILOT_SAM_MODEL (the default) is the admin's: any path, even for a config's control
    configured = SamModels(SamOptions(default_ref=f"vit_b:{checkpoint}"), locator)
    assert configured.spec(None, untrusted=True).checkpoint == checkpoint
    connected = ModelLocator(model_dir, download=True)
    assert parse_sam_ref("mobile_sam.pt", connected, untrusted=True).kind == "mobile_sam"


@pytest.fixture(scope="module")
def image_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("served")
    generate_images(directory, 1, seed=7)
    with serve_directory(directory) as url:
        yield f"{url}/img7_0.png"


@pytest.fixture()
def make_client(monkeypatch, redis_url: str, shapes_model: Path, model_dir: Path):  # type: ignore[no-untyped-def]
    def make(**env: str):  # type: ignore[no-untyped-def]
        monkeypatch.setenv("MODEL_DIR", str(model_dir))
        monkeypatch.setenv("LABELPILOT_MODEL_DETECT", str(shapes_model))  # trusted: absolute
        monkeypatch.setenv("LABELPILOT_ALLOWED_HOSTS", "127.0.0.1")
        monkeypatch.setenv("LABELPILOT_PRELOAD", "")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return create_app(load_settings(), redis.Redis.from_url(redis_url)).test_client()

    return make


def with_model(ref: str) -> str:
    return CONFIG.replace('model_score_threshold="0.25"',
                          f'model_path="{ref}" model_score_threshold="0.25"')


def predict_body(config: str, url: str) -> dict:
    return {"tasks": [{"id": 1, "data": {"image": url}}], "project": "41.1",
            "label_config": config, "params": {"context": None}}


def test_setup_and_predict_refuse_a_model_path_out_of_model_dir(make_client, shapes_model,
                                                                model_dir, image_url):
    client = make_client()
    (model_dir / "link.pt").symlink_to(shapes_model)  # real weights, outside MODEL_DIR
    for ref in (str(shapes_model), "../../etc/passwd", "link.pt"):
        config = with_model(ref)
        setup = client.post("/setup", json={"project": "41.1", "schema": config})
        assert setup.status_code == 422, (ref, setup.json)
        assert "ALLOW_CUSTOM_MODEL_PATH=true" in setup.json["error"]
        predict = client.post("/predict", json=predict_body(config, image_url))
        assert predict.status_code == 422 and "MODEL_DIR" in predict.json["error"]
    sam = load("sam_brush").replace('smart="true">', f'smart="true" sam_model="vit_b:'
                                                     f'{shapes_model}">', 1)
    refused = client.post("/setup", json={"project": "42.1", "schema": sam})
    assert refused.status_code == 422 and "ALLOW_CUSTOM_MODEL_PATH" in refused.json["error"]
    # the default model (LABELPILOT_MODEL_DETECT, absolute) is the admin's: served as before
    served = client.post("/predict", json=predict_body(CONFIG, image_url))
    assert served.status_code == 200 and served.json["results"][0]["result"]


def test_model_paths_inside_model_dir_or_allowed_explicitly_are_served(
        make_client, shapes_model, model_dir, image_url):
    shutil.copyfile(shapes_model, model_dir / "sub" / "shapes.pt")
    inside = make_client().post("/predict", json=predict_body(with_model("sub/shapes.pt"),
                                                              image_url))
    assert inside.status_code == 200 and inside.json["results"][0]["result"]
    allowed = make_client(ALLOW_CUSTOM_MODEL_PATH="true")
    outside = allowed.post("/predict", json=predict_body(with_model(str(shapes_model)),
                                                         image_url))
    assert outside.status_code == 200 and outside.json["results"][0]["result"]
