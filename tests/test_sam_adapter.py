"""Interactive SAM in the Label Studio adapter, in-process: configs, prompt conversion, RLE and
polygon regions, the Flask `/predict` with a context, prewarm, the Redis tier, and clear 4xx."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
import torch

from labelpilot.adapters.label_studio.config import parse_label_config
from labelpilot.adapters.label_studio.interactive import click_from_context, mask_region
from labelpilot.adapters.label_studio.payloads import ContextRegion
from labelpilot.adapters.label_studio.sam_config import batch_plan, sam_setups
from labelpilot.app import create_app
from labelpilot.backends.embedding_cache import EmbeddingCache
from labelpilot.backends.interactive import MaskResult, PointPrompt, Prompt
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.sam import SamInteractor, SamModels, SamOptions
from labelpilot.backends.sam.shared_store import RedisEmbeddingStore
from labelpilot.label_config import load
from labelpilot.settings import load_settings
from tests.helpers import serve_directory

SAM_REF = "random:mobile_sam"


def region(kind: str, value: dict, positive: bool = True, **extra: object) -> ContextRegion:
    return ContextRegion.model_validate({"type": kind, "value": value, "is_positive": positive,
                                         "from_name": extra.get("from_name", "point"),
                                         "to_name": "image", "original_width": 800,
                                         "original_height": 600})


# --- configs and conversions -----------------------------------------------------------------

def test_shipped_sam_configs_pair_smart_prompts_with_brush_or_polygon_output():
    brush = sam_setups(load("sam_brush"))["image"]
    assert brush.prompt_controls == ("point", "box") and brush.image_key == "image"
    assert [(t.name, t.kind) for t in brush.targets] == [("mask", "brush")]
    assert brush.model_ref is None  # LABELPILOT_SAM_MODEL
    polygon = sam_setups(load("sam_polygon"))["image"]
    assert [(t.name, t.kind, t.result_type) for t in polygon.targets] == [
        ("outline", "polygon", "polygonlabels")]
    assert sam_setups(load("detection")) == {}
    configured = sam_setups(load("sam_brush").replace(
        'smart="true">', 'smart="true" sam_model="vit_b:/w/sam.pth">', 1))["image"]
    assert configured.model_ref == "vit_b:/w/sam.pth"
    # YOLO does not pre-annotate SAM's output control unless it names a model
    assert batch_plan(parse_label_config(load("sam_brush")), {"image": brush}).controls == ()
    target, label = brush.target_for("person")
    assert (target.name, label) == ("mask", "Person")
    with pytest.raises(ValueError, match="not a label of any output control"):
        brush.target_for("Banana")


def test_percent_context_becomes_pixels_with_negative_points_and_rotated_boxes():
    click = click_from_context([
        region("keypointlabels", {"x": 25, "y": 50, "width": 0.5, "keypointlabels": ["Person"]}),
        region("keypointlabels", {"x": 75, "y": 10, "keypointlabels": ["Person"]}, False),
        region("rectanglelabels", {"x": 10, "y": 20, "width": 50, "height": 25, "rotation": 90,
                                   "rectanglelabels": ["Person"]}, from_name="box"),
    ], width=800, height=600)
    assert click.label == "Person" and click.to_name == "image"
    assert click.prompt.points == (PointPrompt(200, 300, True), PointPrompt(600, 60, False))
    box = click.prompt.box
    assert box is not None  # 400 x 150 px rotated 90° about its top-left corner (80, 120)
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((-70, 120, 80, 520))


@pytest.mark.parametrize("regions, fragment", [
    ([], "no keypoint or rectangle"),
    ([region("brushlabels", {"format": "rle", "rle": [1]})], "got brushlabels"),
    ([region("keypointlabels", {"x": "left", "y": 3})], "need numbers in percent"),
    ([region("rectanglelabels", {"x": 1, "y": 2})], "width"),
])
def test_unusable_contexts_say_what_is_wrong(regions, fragment):
    with pytest.raises(ValueError, match=fragment):
        click_from_context(regions, 800, 600)


def test_brush_region_round_trips_through_decode_rle_and_polygon_is_valid():
    from label_studio_sdk.converter.brush import decode_rle

    mask = np.zeros((120, 200), bool)
    cv2.circle(mask.view(np.uint8), (120, 60), 35, 1, -1)
    setup = sam_setups(load("sam_brush"))["image"]
    brush = mask_region(MaskResult(mask, 0.87654), setup.targets[0], "Person", "image", 200, 120)
    assert brush["type"] == "brushlabels" and brush["value"]["brushlabels"] == ["Person"]
    assert (brush["original_width"], brush["original_height"], brush["score"]) == (200, 120,
                                                                                   0.8765)
    decoded = np.asarray(decode_rle(brush["value"]["rle"])).reshape(120, 200, 4)[:, :, 3]
    assert np.array_equal(decoded > 0, mask)
    target = sam_setups(load("sam_polygon"))["image"].targets[0]
    polygon = mask_region(MaskResult(mask, 0.5), target, "Person", "image", 200, 120)
    points = np.array(polygon["value"]["points"])
    assert polygon["value"]["closed"] and len(points) >= 8
    assert points.min() >= 0 and points[:, 0].max() <= 100 and points[:, 1].max() <= 100
    pixels = (points * [2.0, 1.2]).astype(np.float32)
    assert cv2.contourArea(pixels) == pytest.approx(mask.sum(), rel=0.1)
    filled = np.zeros_like(mask, np.uint8)
    cv2.fillPoly(filled, [np.round(pixels).astype(np.int32)], 1)
    assert (filled.astype(bool) & mask).sum() / (filled.astype(bool) | mask).sum() > 0.9


# --- the HTTP app in-process -----------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import ultralytics

    directory = tmp_path_factory.mktemp("sam-images")
    shutil.copy(Path(ultralytics.__file__).parent / "assets" / "bus.jpg", directory / "bus.jpg")
    photo = cv2.imread(str(directory / "bus.jpg"))
    cv2.imwrite(str(directory / "bus-crop.png"), photo[100:700, 50:750])
    (directory / "broken.png").write_bytes(b"\x89PNG not really")
    with serve_directory(directory) as url:
        yield url, directory


@pytest.fixture(scope="module")
def models() -> SamModels:
    """The SAM models the app serves with (a process builds them once; here once per module)."""
    return SamModels(SamOptions(default_ref=SAM_REF), ModelLocator(Path("models"),
                                                                   download=False))


def app_client(redis_url: str, sam: SamModels):  # type: ignore[no-untyped-def]
    settings = load_settings(sam_model=sam.options.default_ref,
                             allowed_hosts=("127.0.0.1",))
    return create_app(settings, redis.Redis.from_url(redis_url), sam=sam).test_client()


@pytest.fixture()
def client(monkeypatch, redis_url: str, models: SamModels):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LABELPILOT_ALLOWED_HOSTS", "127.0.0.1")
    return app_client(redis_url, models)


def click_body(url: str, regions: list[dict], config: str | None = None) -> dict:
    return {"tasks": [{"id": 3, "data": {"image": url}}], "project": "9.1700000000",
            "label_config": config or load("sam_brush"), "params": {"context": {
                "result": regions}}}


def keypoint(x: float, y: float, label: str = "Vehicle", positive: bool = True) -> dict:
    return {"type": "keypointlabels", "from_name": "point", "to_name": "image",
            "original_width": 810, "original_height": 1080, "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def nonempty_point(sam: SamInteractor, image: np.ndarray) -> tuple[float, float]:
    """A click (in percent) where the random-weight model gives a non-empty mask."""
    height, width = image.shape[:2]
    for fy in (0.5, 0.3, 0.7, 0.2, 0.8):
        for fx in (0.5, 0.3, 0.7, 0.2, 0.8):
            if sam.segment(image, Prompt(points=(PointPrompt(fx * width, fy * height),))
                           ).mask.any():
                return 100 * fx, 100 * fy
    raise AssertionError("the random model gives empty masks everywhere")


def test_a_click_returns_one_brush_region_equal_to_the_models_mask(client, images, models):
    url, directory = images
    sam = models.get(SAM_REF)
    photo = cv2.imread(str(directory / "bus.jpg"))
    x, y = nonempty_point(sam, photo)
    version = client.post("/setup", json={"project": "9.1", "schema": load("sam_brush")}).json[
        "model_version"]
    assert version == "sam-mobile_sam-random"
    assert client.get("/versions?project=9").json == {"versions": [version]}
    response = client.post("/predict", json=click_body(f"{url}/bus.jpg", [keypoint(x, y)]))
    assert response.status_code == 200, response.json
    assert response.headers["X-Labelpilot-Sam-Embedding"] in ("memory", "redis")
    (prediction,) = response.json["results"]
    (brush,) = prediction["result"]
    assert prediction["model_version"] == version
    assert brush["from_name"] == "mask" and brush["value"]["brushlabels"] == ["Vehicle"]
    from label_studio_sdk.converter.brush import decode_rle

    expected = sam.segment(photo, Prompt(points=(PointPrompt(x * 8.1, y * 10.8),)))
    got = np.asarray(decode_rle(brush["value"]["rle"])).reshape(1080, 810, 4)[:, :, 3] > 0
    assert np.array_equal(got, expected.mask)
    assert brush["score"] == pytest.approx(expected.score, abs=1e-4)
    polygon = client.post("/predict", json=click_body(
        f"{url}/bus.jpg", [keypoint(x, y)], load("sam_polygon"))).json["results"][0]["result"]
    assert polygon[0]["type"] == "polygonlabels" and len(polygon[0]["value"]["points"]) >= 3
    health = client.get("/health").json["sam"]
    assert SAM_REF in health["models"] and health["cache"]["entries"] >= 1
    assert health["cache"]["hits"] >= 2 and health["cache"]["mb"] >= 4.0


@pytest.mark.parametrize("regions, status, fragment", [
    ([keypoint(150, 50)], 422, "outside the 810x1080 image"),
    ([keypoint(50, 50, label="Banana")], 422, "not a label of any output control"),
    ([{"type": "keypointlabels", "value": {"x": "a"}}], 422, "need numbers in percent"),
    ([{"type": "choices", "value": {"choices": ["A"]}}], 422, "no keypoint or rectangle"),
    ([{"value": {}}], 400, "type"),
])
def test_bad_clicks_get_a_4xx_that_says_what_to_fix(client, images, regions, status, fragment):
    url, _ = images
    response = client.post("/predict", json=click_body(f"{url}/bus.jpg", regions))
    assert response.status_code == status and fragment in response.json["error"]


def test_image_and_model_problems_are_4xx_and_the_server_keeps_serving(client, images,
                                                                       redis_url, tmp_path):
    url, _ = images
    broken = client.post("/predict", json=click_body(f"{url}/broken.png", [keypoint(5, 5)]))
    assert broken.status_code == 422 and "task 3" in broken.json["error"]
    missing = client.post("/predict", json=click_body(f"{url}/nope.png", [keypoint(5, 5)]))
    assert missing.status_code == 422 and "404" in missing.json["error"]
    # a worker with MODEL_DIR=tmp_path (downloads off) and no LABELPILOT_SAM_MODEL
    unconfigured = app_client(redis_url, SamModels(SamOptions(), ModelLocator(
        tmp_path, download=False)))
    config = load("sam_brush").replace('smart="true">', 'smart="true" sam_model="sam_b.pt">', 1)
    for answer in (unconfigured.post("/setup", json={"project": "9.1", "schema": config}),
                   unconfigured.post("/predict", json=click_body(
                       f"{url}/bus.jpg", [keypoint(5, 5)], config))):
        assert answer.status_code == 422 and "SAM checkpoint 'sam_b.pt' not found" in \
            answer.json["error"]
    unset = unconfigured.post("/setup", json={"project": "9.1", "schema": load("sam_brush")})
    assert unset.status_code == 422 and "LABELPILOT_SAM_MODEL" in unset.json["error"]
    assert unconfigured.get("/health").status_code == 200
    assert client.get("/health").status_code == 200


def test_batch_predict_prewarms_so_the_first_click_is_a_hit(client, images, models):
    url, directory = images
    sam = models.get(SAM_REF)
    crop = cv2.imread(str(directory / "bus-crop.png"))
    assert not sam.is_cached(crop)
    body = click_body(f"{url}/bus-crop.png", [])
    body["params"]["context"] = None
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200
    # nothing to store in LS (no "result"), same model_version as /setup
    assert answer.json["results"] == [{"model_version": "sam-mobile_sam-random"}]
    deadline = time.monotonic() + 120
    while not sam.is_cached(crop) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sam.is_cached(crop), "prewarm did not compute the embedding"
    started = time.perf_counter()
    response = client.post("/predict", json=click_body(f"{url}/bus-crop.png",
                                                       [keypoint(50, 50)]))
    assert response.headers["X-Labelpilot-Sam-Embedding"] == "memory"
    assert time.perf_counter() - started < 1.5


def test_a_second_worker_reuses_the_embedding_through_redis(redis_url, models):
    spec = models.spec(SAM_REF)
    store = RedisEmbeddingStore(redis.Redis.from_url(redis_url), ttl=60)
    shared = models.get(SAM_REF)  # reuse its weights: two "workers" in one process
    workers = []
    for _ in range(2):
        worker = SamInteractor.__new__(SamInteractor)
        worker.__dict__.update(shared.__dict__)
        worker.cache = EmbeddingCache(1 << 26, lambda e: e.nbytes)
        worker.store = store
        workers.append(worker)
    image = np.full((200, 300, 3), 77, np.uint8)
    image[50:150, 100:200] = 200
    prompt = Prompt(points=(PointPrompt(150, 100),))
    first, source_a = workers[0].segment_with_info(image, prompt)
    second, source_b = workers[1].segment_with_info(image, prompt)
    assert (source_a, source_b) == ("encoded", "redis")
    assert np.array_equal(first.mask, second.mask) and first.score == pytest.approx(
        second.score, abs=1e-6)
    assert spec.version in next(iter(store.client.scan_iter("labelpilot:sam:emb:*"))).decode()


def test_redis_tier_keeps_only_the_newest_embeddings_under_its_cap(redis_url):
    from labelpilot.backends.sam.shared_store import EMBEDDING_MB
    from labelpilot.backends.sam.transforms import Frame

    client = redis.Redis.from_url(redis_url)
    store = RedisEmbeddingStore(client, ttl=60, max_mb=3 * EMBEDDING_MB)  # room for 3
    frame = Frame(200, 300, 683, 1024)
    for i in range(5):
        store.put((f"img{i}", "v-test"), torch.full((1, 256, 64, 64), float(i)), frame)
    assert [store.get((f"img{i}", "v-test")) is not None for i in range(5)] == [
        False, False, True, True, True]
    tensor, got_frame = store.get(("img4", "v-test"))  # type: ignore[misc]
    assert float(tensor[0, 0, 0, 0]) == 4.0 and got_frame == frame


def test_clicks_still_work_when_redis_is_down(models):
    from labelpilot.embedded_redis import free_port

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    shared = models.get(SAM_REF)
    worker = SamInteractor.__new__(SamInteractor)
    worker.__dict__.update(shared.__dict__)
    worker.cache = EmbeddingCache(1 << 26, lambda e: e.nbytes)
    worker.store = RedisEmbeddingStore(dead, ttl=60)
    image = np.full((120, 160, 3), 33, np.uint8)
    result, source = worker.segment_with_info(image, Prompt(points=(PointPrompt(80, 60),)))
    assert source == "encoded" and result.mask.shape == (120, 160)
    assert worker.segment_with_info(image, Prompt(points=(PointPrompt(10, 10),)))[1] == "memory"
