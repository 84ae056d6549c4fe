"""The Flask app in-process with the real trained model: protocol answers and clear errors."""

from __future__ import annotations

import base64
import http.server
import time
from collections.abc import Iterator

import pytest

from labelpilot.label_config import load
from tests.helpers import generate_images, serve_directory, serve_handler

CONFIG = load("detection_shapes")


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("served")
    generate_images(directory, 2, seed=7)
    (directory / "truncated.png").write_bytes(
        (directory / "img7_0.png").read_bytes()[:120])
    with serve_directory(directory) as url:
        yield url


@pytest.fixture()
def client(make_client):  # type: ignore[no-untyped-def]
    return make_client()


def predict_body(urls: list[str], config: str = CONFIG) -> dict:
    return {"tasks": [{"id": i, "data": {"image": u}} for i, u in enumerate(urls)],
            "project": "5.1700000000", "label_config": config, "params": {"context": None}}


def test_health_and_setup_version_match_predictions(client, image_server):
    assert client.get("/health").json["status"] == "UP"
    version = client.post("/setup", json={"project": "5.1", "schema": CONFIG}).json[
        "model_version"]
    answer = client.post("/predict", json=predict_body([f"{image_server}/img7_0.png"])).json
    assert [r["model_version"] for r in answer["results"]] == [version]
    assert answer["results"][0]["result"], "the trained model finds the shapes"


def test_one_bad_image_fails_only_its_task(client, image_server):
    urls = [f"{image_server}/img7_0.png", f"{image_server}/truncated.png",
            f"{image_server}/missing.png", "http://not-allowed.example/x.png",
            f"{image_server}/img7_1.png"]
    response = client.post("/predict", json=predict_body(urls))
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == 5
    assert "result" in results[0] and "result" in results[4]
    assert [("result" in r) for r in results[1:4]] == [False, False, False]
    errors = {e["task"]: e["error"] for e in response.json["errors"]}
    assert "corrupt or truncated" in errors[1]
    assert "HTTP 404" in errors[2]
    assert "not allowed" in errors[3]


@pytest.mark.parametrize("body, status, fragment", [
    ("{not json", 400, "not valid JSON"),
    ("", 400, "empty"),
    ('{"tasks": []}', 400, "tasks"),
    ('{"tasks": "nope"}', 400, "tasks"),
])
def test_malformed_requests_get_400_with_a_reason(client, body, status, fragment):
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == status
    assert fragment in response.json["error"]


def test_config_the_backend_cannot_serve_is_refused_by_setup_and_predict(client, image_server):
    text_only = "<View><Text name='t' value='$text'/><Choices name='c' toName='t'>" \
                "<Choice value='A'/></Choices></View>"
    setup = client.post("/setup", json={"project": "5.1", "schema": text_only})
    assert setup.status_code == 422 and "nothing in this label config" in setup.json["error"]
    predict = client.post("/predict", json=predict_body([f"{image_server}/img7_0.png"],
                                                        text_only))
    assert predict.status_code == 422


def test_labels_that_match_no_model_class_say_how_to_map_them(client, image_server):
    config = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" '
              'toName="image"><Label value="Airplane"/></RectangleLabels></View>')
    response = client.post("/predict", json=predict_body([f"{image_server}/img7_0.png"],
                                                         config))
    assert response.status_code == 422
    assert "predicted_values" in response.json["error"]
    assert "circle" in response.json["error"]


def test_wrong_model_task_for_control_is_explained(make_client, image_server, shapes_model):
    config = ('<View><Image name="image" value="$image"/><PolygonLabels name="p" '
              'toName="image"><Label value="Circle"/></PolygonLabels></View>')
    client = make_client(LABELPILOT_MODEL_SEGMENT=str(shapes_model))  # a detect model
    response = client.post("/predict", json=predict_body([f"{image_server}/img7_0.png"],
                                                         config))
    assert response.status_code == 422
    assert "needs a segment model" in response.json["error"]


def test_missing_weights_are_a_clear_error(make_client, image_server, tmp_path):
    client = make_client(ALLOW_CUSTOM_MODEL_PATH="true")  # an absolute model_path is allowed
    config = CONFIG.replace('model_score_threshold="0.25"',
                            f'model_path="{tmp_path}/nope.pt" model_score_threshold="0.25"')
    response = client.post("/predict", json=predict_body([f"{image_server}/img7_0.png"],
                                                         config))
    assert response.status_code == 422
    assert "not found" in response.json["error"] and "MODEL_DIR" in response.json["error"]


def test_setup_answers_before_any_model_exists_so_training_can_start(make_client, image_server,
                                                                    tmp_path):
    """A new project whose default weights are absent can still connect (and then train)."""
    client = make_client(LABELPILOT_MODEL_SEGMENT=str(tmp_path / "absent-seg.pt"))
    config = ('<View><Image name="image" value="$image"/><PolygonLabels name="p" '
              'toName="image"><Label value="Circle"/></PolygonLabels></View>')
    setup = client.post("/setup", json={"project": "77.1", "schema": config})
    assert setup.status_code == 200 and setup.json["model_version"] == "untrained-p"
    body = predict_body([f"{image_server}/img7_0.png"], config)
    body["project"] = "77.1"
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert "absent-seg.pt" in response.json["error"]
    assert "Start training" in response.json["error"]


def test_interactive_context_without_sam_is_refused_clearly(client, image_server):
    body = predict_body([f"{image_server}/img7_0.png"])
    body["params"]["context"] = {"result": [{"type": "keypointlabels", "value": {
        "x": 50, "y": 50, "keypointlabels": ["Circle"]}, "is_positive": True}]}
    response = client.post("/predict", json=body)
    assert response.status_code == 422 and "interactive" in response.json["error"]


def test_webhooks_are_filtered_validated_and_recorded(client):
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED",
                                         "project": {"id": 5}}).json["status"] == "Unknown event"
    bad = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 5}})
    assert bad.status_code == 400 and "annotation" in bad.json["error"]
    no_project = client.post("/webhook", json={"action": "START_TRAINING"})
    assert no_project.status_code == 400 and "project" in no_project.json["error"]
    ok = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}})
    assert ok.status_code == 201 and ok.json["event_id"]


def test_webhook_with_redis_down_answers_fast_with_a_clear_status(make_client):
    import time

    client = make_client("redis://127.0.0.1:1/0")  # nothing listens on port 1
    started = time.perf_counter()
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}})
    elapsed = time.perf_counter() - started
    assert response.status_code == 503 and "Redis is unavailable" in response.json["error"]
    assert elapsed < 1.0  # LS gives a webhook 1 s


def test_basic_auth_protects_every_endpoint(make_client):
    client = make_client(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="secret")
    for method, path in (("GET", "/health"), ("POST", "/setup"), ("POST", "/predict"),
                         ("POST", "/webhook"), ("GET", "/versions"), ("GET", "/jobs"),
                         ("GET", "/metrics"), ("GET", "/admin/models")):
        denied = client.open(path, method=method, json={})
        assert denied.status_code == 401, path
        assert denied.headers["WWW-Authenticate"] == 'Basic realm="labelpilot"'
        assert "basic auth" in denied.json["error"]
    good = base64.b64encode(b"ls:secret").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Basic {good}"}).status_code == 200


def test_versions_lists_the_project_model_version(client):
    version = client.post("/setup", json={"project": "6.1", "schema": CONFIG}).json[
        "model_version"]
    assert client.get("/versions", json={"project": "6.1"}).json == {"versions": [version]}
    assert client.post("/versions", json={"project": "6.1"}).json == {"versions": [version]}


class Trickle(http.server.BaseHTTPRequestHandler):
    """An image server that sends a valid PNG's bytes a few at a time for up to 8 s: every
    single read is quick, only the whole download is slow."""

    def do_GET(self) -> None:
        body = generate_image_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        started = time.monotonic()
        try:
            for i in range(0, len(body), 16):
                if time.monotonic() - started > 8:
                    break
                self.wfile.write(body[i:i + 16])
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the backend gave up: that is the point

    def log_message(self, *args: object) -> None:
        pass


def generate_image_bytes() -> bytes:
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(
        0, 255, (64, 64, 3), dtype=np.uint8))
    assert ok
    return png.tobytes()


def test_a_slow_image_source_fails_its_task_by_the_download_deadline(make_client,
                                                                     image_server):
    client = make_client(LABELPILOT_IMAGE_DOWNLOAD_SECONDS="1.5")
    with serve_handler(Trickle) as slow:
        urls = [f"{image_server}/img7_0.png", f"{slow}/slow.png", f"{image_server}/img7_1.png"]
        started = time.perf_counter()
        response = client.post("/predict", json=predict_body(urls))
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    results = response.json["results"]
    assert "result" in results[0] and "result" in results[2], "the other tasks are served"
    assert "result" not in results[1]
    errors = {e["task"]: e["error"] for e in response.json["errors"]}
    assert "image download took longer than 1.5 s" in errors[1]
    assert elapsed < 5.0, f"the slow download held the request {elapsed:.1f} s"


def test_admin_sets_the_first_version_floor_of_a_project(make_client):
    client = make_client(LABELPILOT_ADMIN_TOKEN="admin-secret")
    auth = {"Authorization": "Bearer admin-secret"}
    path = "/admin/projects/ls-floor-test/settings"
    assert client.get(path, headers=auth).json["first_version_floor"] == 0.05
    saved = client.put(path, headers=auth, json={"first_version_floor": 0.2})
    assert saved.status_code == 200 and saved.json["first_version_floor"] == 0.2
    bad = client.put(path, headers=auth, json={"first_version_floor": 3})
    assert bad.status_code == 400 and "first_version_floor" in bad.json["error"]
