"""The nuclio-compatible facade over real HTTP (real gunicorn, real Redis, real RQ worker),
called exactly the way CVAT 2.73's lambda manager calls nuclio (see
../shared/research/cvat-protocol.md), with its replies checked by CVAT's own parsing rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import requests
from cvat_sdk import masks
from rq.job import Job

from labelpilot.embedded_redis import free_port
from labelpilot.processes import stop_processes
from labelpilot.synthetic import CLASSES
from labelpilot.trainers.settings import save_params
from tests.conftest import REPO
from tests.helpers import generate_images, huge_png, iou
from tests.test_cvat import frame_with_square, write_pose_snapshot, write_snapshot

pytestmark = pytest.mark.slow
SECRET = "cvat-test-secret"
# what CVAT's LambdaGateway._http() adds to every request
NUCLIO_HEADERS = {"x-nuclio-project-name": "cvat", "x-nuclio-function-namespace": "nuclio",
                  "x-nuclio-invoke-via": "domain-name", "X-Nuclio-Invoke-Timeout": "120s"}


class Facade:
    """`url`: the facade's own port (LABELPILOT_CVAT_PORT); `main`: the Label Studio port."""

    def __init__(self, url: str, direct: tuple[int, int], process: subprocess.Popen[bytes],
                 log: Path, env: dict[str, str], main: str):
        self.url, self.direct, self.process, self.log, self.env = url, direct, process, log, env
        self.main = main

    def invoke(self, name: str, payload: object, **kwargs: object) -> requests.Response:
        """CVAT_NUCLIO_INVOKE_METHOD=dashboard: POST /api/function_invocations."""
        headers = {**NUCLIO_HEADERS, "x-nuclio-function-name": name, "x-nuclio-path": "/"}
        return requests.post(f"{self.url}/api/function_invocations", json=payload,
                             headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def functions(self) -> dict:
        response = requests.get(f"{self.url}/api/functions", headers=NUCLIO_HEADERS, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def facade(tmp_path_factory, redis_url, shapes_model) -> Iterator[Facade]:
    """`labelpilot serve`'s gunicorn with the CVAT facade on its port and direct-mode ports."""
    from labelpilot.serving import gunicorn_command

    tmp = tmp_path_factory.mktemp("cvat")
    port, cvat_port, low = free_port(), free_port(), free_port()
    direct = (low, low)  # one port is enough to check direct mode
    prom = tmp / "prometheus"
    prom.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_url,
           "MODEL_DIR": str(tmp / "models"), "PROMETHEUS_MULTIPROC_DIR": str(prom),
           "LABELPILOT_CVAT_FUNCTIONS": f"shapes={shapes_model}",
           "LABELPILOT_CVAT_SAM": "python:tests.stub_sam:StubSam",
           "LABELPILOT_CVAT_DIRECT_PORTS": f"{low}-{low}", "LABELPILOT_CVAT_PORT": str(cvat_port),
           "LABELPILOT_CVAT_WEBHOOK_SECRET": SECRET,
           "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "secret"}  # CVAT sends no basic auth
    env.pop("LABELPILOT_MODEL_DETECT", None)
    log = tmp / "backend.log"
    process = subprocess.Popen(gunicorn_command("127.0.0.1", port, 2, [cvat_port, low]), env=env,
                               cwd=REPO, stdout=open(log, "ab"),  # noqa: SIM115
                               stderr=subprocess.STDOUT)
    redis.Redis.from_url(redis_url).delete("labelpilot:cvat:direct-ports")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_processes([process])
            raise RuntimeError(f"facade did not start:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 401:  # up, auth on
                break
        except requests.RequestException:
            pass
        time.sleep(0.3)
    server = Facade(f"http://127.0.0.1:{cvat_port}", direct, process, log, env, url)
    yield server
    stop_processes([process])
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "cvat-backend.log").write_bytes(log.read_bytes())


def cvat_parse(config: dict) -> dict:
    """What CVAT 2.73's LambdaFunction.__init__ makes of one nuclio function config (it skips
    or rejects the function where this raises)."""
    function_id = config["metadata"]["name"]
    annotations = config["metadata"]["annotations"]
    assert all(isinstance(v, str) for v in annotations.values()), "annotations are strings"
    kind = annotations.get("type")
    assert kind in ("detector", "interactor", "tracker", "reid"), kind
    spec = json.loads(annotations.get("spec") or "[]")  # a JSON *string*
    names = [item["name"] for item in spec]
    assert len(names) == len(set(names)), "non-unique labels"
    for item in spec:
        attribute_names = [a["name"] for a in item.get("attributes", [])]
        assert len(attribute_names) == len(set(attribute_names))
        if item.get("sublabels"):
            assert item.get("type", "any") == "skeleton" and item.get("svg")
            assert all(s.get("type") == "points" for s in item["sublabels"])
    parsed = {"id": function_id, "kind": kind, "labels": names, "spec": spec,
              "state": config["status"]["state"], "description": config["spec"]["description"],
              "port": config["status"].get("httpPort"),
              "name": annotations.get("name", function_id),
              "version": int(annotations.get("version", "1")),
              "min_pos_points": int(annotations.get("min_pos_points", 1)),
              "min_neg_points": int(annotations.get("min_neg_points", -1)),
              "startswith_box": bool(annotations.get("startswith_box", False)),
              "startswith_box_optional": bool(annotations.get("startswith_box_optional", False))}
    if "supported_shape_types" in annotations:
        parsed["supported_shape_types"] = annotations["supported_shape_types"].split(",")
    # the bool(str) trap: a "false" would read as True
    assert not any(v.strip().lower() in ("false", "0", "no") for k, v in annotations.items()
                   if k.startswith("startswith"))
    return parsed


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def shape_images(tmp_path_factory):  # type: ignore[no-untyped-def]
    return generate_images(tmp_path_factory.mktemp("cvat-img"), 2, seed=31)


def test_function_list_and_detail_parse_by_cvats_rules(facade):
    listed = facade.functions()
    parsed = {name: cvat_parse(config) for name, config in listed.items()}
    assert {"labelpilot-shapes", "labelpilot-sam", "labelpilot-tracker"} <= set(parsed)
    detector = parsed["labelpilot-shapes"]
    assert detector["kind"] == "detector" and detector["labels"] == list(CLASSES)
    assert {item["type"] for item in detector["spec"]} == {"rectangle"}
    assert detector["state"] == "ready" and detector["port"] == facade.direct[0]
    sam = parsed["labelpilot-sam"]
    assert sam["kind"] == "interactor" and sam["version"] >= 2  # the UI's minimum
    assert (sam["min_pos_points"], sam["min_neg_points"]) == (0, 0)
    assert sam["startswith_box_optional"] and not sam["startswith_box"]
    tracker = parsed["labelpilot-tracker"]
    assert tracker["kind"] == "tracker"
    assert tracker["supported_shape_types"] == ["rectangle", "polygon", "mask"]
    one = requests.get(f"{facade.url}/api/functions/labelpilot-shapes", headers=NUCLIO_HEADERS,
                       timeout=30)
    assert one.status_code == 200 and cvat_parse(one.json()) == detector
    missing = requests.get(f"{facade.url}/api/functions/nope", timeout=30)
    assert missing.status_code == 404 and "GET /api/functions" in missing.json()["error"]


def test_detector_finds_the_shapes_with_and_without_threshold(facade, shape_images,
                                                              shapes_model):
    import cv2

    from labelpilot.adapters.cvat.detector import detect
    from labelpilot.backends.yolo import YoloModel

    image = shape_images[0]
    answer = facade.invoke("labelpilot-shapes", {"image": b64(image.path.read_bytes())})
    assert answer.status_code == 200, answer.text
    shapes = answer.json()
    # exactly what the model finds in-process at CVAT's default threshold (a model trained
    # on another machine may add a low-scored extra box: the truth check below is the quality)
    direct = detect(YoloModel(str(shapes_model)), cv2.imread(str(image.path)))
    assert isinstance(shapes, list) and len(shapes) == len(direct.prediction.instances)
    assert len(shapes) >= len(image.boxes)
    for item in shapes:
        assert item["type"] == "rectangle" and item["label"] in CLASSES
        assert 0 < float(item["confidence"]) <= 1  # a string, as CVAT expects
        assert item["attributes"] == [{"name": "score", "value": item["confidence"]}]
    for truth in image.boxes:
        assert any(s["label"] == truth.class_name and
                   iou(tuple(s["points"]), (truth.x1, truth.y1, truth.x2, truth.y2)) > 0.6
                   for s in shapes)
    strict = facade.invoke("labelpilot-shapes", {"image": b64(image.path.read_bytes()),
                                                 "threshold": 0.999}).json()
    assert len(strict) < len(shapes)
    assert all(float(s["confidence"]) >= 0.999 for s in strict)


def test_detector_roi_cvat_style_and_explicit(facade, shape_images):
    """CVAT crops the frame to the roi and shifts results itself; agents send `roi`."""
    import cv2

    image = shape_images[1]
    x1, y1, x2, y2 = 20, 20, 130, 130  # a region of the frame the user selected
    inside = [b for b in image.boxes if b.x1 >= x1 and b.y1 >= y1 and b.x2 <= x2 and b.y2 <= y2]
    assert inside and len(inside) < len(image.boxes)
    full = cv2.imread(str(image.path))
    ok, crop = cv2.imencode(".png", full[y1:y2, x1:x2])
    assert ok
    cropped = facade.invoke("labelpilot-shapes", {"image": b64(crop.tobytes())}).json()
    explicit = facade.invoke("labelpilot-shapes", {"image": b64(image.path.read_bytes()),
                                                   "roi": [x1, y1, x2, y2]}).json()
    assert explicit and all(x1 - 1 <= s["points"][0] and s["points"][2] <= x2 + 1 and
                            y1 - 1 <= s["points"][1] and s["points"][3] <= y2 + 1
                            for s in explicit)
    for box in inside:
        assert any(s["label"] == box.class_name and iou(
            tuple(s["points"]), (box.x1 - x1, box.y1 - y1, box.x2 - x1, box.y2 - y1)) > 0.6
            for s in cropped)
        assert any(s["label"] == box.class_name and iou(
            tuple(s["points"]), (box.x1, box.y1, box.x2, box.y2)) > 0.6 for s in explicit)


def test_direct_mode_posts_to_the_functions_own_port(facade, shape_images):
    port = cvat_parse(facade.functions()["labelpilot-shapes"])["port"]
    direct = requests.post(f"http://127.0.0.1:{port}/", json={
        "image": b64(shape_images[0].path.read_bytes())}, headers=NUCLIO_HEADERS, timeout=60)
    assert direct.status_code == 200, direct.text
    via_dashboard = facade.invoke("labelpilot-shapes",
                                  {"image": b64(shape_images[0].path.read_bytes())}).json()
    assert direct.json() == via_dashboard
    main = requests.post(f"{facade.url}/", json={"image": "x"}, timeout=30)
    assert main.status_code == 404 and "x-nuclio-function-name" in main.json()["error"]


def decoded(shape: dict, width: int, height: int) -> np.ndarray:
    assert shape["type"] == "mask"
    points = shape["points"]
    mask = masks.decode_mask(points, image_width=width, image_height=height)  # cvat-sdk
    ys, xs = np.nonzero(mask)
    assert points[-4:] == [xs.min(), ys.min(), xs.max(), ys.max()]  # bbox is the mask's
    return mask


def truth_mask(size: int, box) -> np.ndarray:  # type: ignore[no-untyped-def]
    from labelpilot.synthetic import _draw

    canvas = np.zeros((size, size, 3), np.uint8)
    _draw(canvas, box, (255, 255, 255))
    return canvas[:, :, 0] > 0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_interactor_returns_cvat_mask_rle_with_and_without_box(facade, shape_images):
    image = shape_images[0]
    box = image.boxes[0]
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) * 0.55
    body = {"image": b64(image.path.read_bytes()), "pos_points": [[cx, cy]], "neg_points": [],
            "obj_bbox": None}
    answer = facade.invoke("labelpilot-sam", body)
    assert answer.status_code == 200, answer.text
    (shape,) = answer.json()["shapes"]
    assert shape["attributes"] == [{"spec_id": 0, "value": "0.9000"}]
    truth = truth_mask(image.size, box)
    assert mask_iou(decoded(shape, image.size, image.size), truth) > 0.85
    boxed = facade.invoke("labelpilot-sam", {
        "image": b64(image.path.read_bytes()), "pos_points": [], "neg_points": [],
        "obj_bbox": [[box.x1 - 3, box.y1 - 3], [box.x2 + 3, box.y2 + 3]]}).json()
    mask = decoded(boxed["shapes"][0], image.size, image.size)
    assert mask_iou(mask, truth) > 0.85
    nothing = facade.invoke("labelpilot-sam", {"image": b64(image.path.read_bytes()),
                                               "pos_points": [], "neg_points": [[5, 5]]})
    assert nothing.status_code == 400 and "positive point" in nothing.json()["error"]


def test_tracker_start_with_empty_states_then_continue(facade):
    import cv2

    def frame(x: int, y: int) -> str:
        ok, png = cv2.imencode(".png", frame_with_square(x, y))
        assert ok
        return b64(png.tobytes())

    blob = np.zeros((160, 200), bool)
    blob[45:75, 35:65] = True
    shapes = [{"type": "rectangle", "points": [30, 40, 70, 80]},
              {"type": "polygon", "points": [30, 40, 70, 40, 50, 80]},
              {"type": "mask", "points": masks.encode_mask(blob)}]
    start = facade.invoke("labelpilot-tracker", {"image": frame(30, 40), "shapes": shapes,
                                                 "states": []})
    assert start.status_code == 200, start.text
    started = start.json()
    assert len(started["states"]) == 3 and started["shapes"] == shapes
    states = json.loads(json.dumps(started["states"]))  # CVAT signs and returns them
    step = facade.invoke("labelpilot-tracker", {"image": frame(38, 45),
                                                "shapes": [None, None, None], "states": states})
    assert step.status_code == 200, step.text
    moved = step.json()
    assert moved["shapes"][0]["points"] == pytest.approx([38, 45, 78, 85], abs=1.01)
    assert moved["shapes"][1]["points"] == pytest.approx([38, 45, 78, 45, 58, 85], abs=1.01)
    assert moved["shapes"][2]["points"][:-4] == shapes[2]["points"][:-4]
    assert moved["shapes"][2]["points"][-4:] == pytest.approx([43, 50, 72, 79], abs=1.01)
    legacy = facade.invoke("labelpilot-tracker", {"image": frame(30, 40),
                                                  "shapes": [[30, 40, 70, 80]], "states": []})
    assert legacy.status_code == 200 and legacy.json()["shapes"][0]["type"] == "rectangle"


def test_tracker_refuses_a_forged_state_with_a_huge_template_fast(facade):
    """CVAT signs whatever the browser returns: a state's template is untrusted input and
    obeys the pixel limit before it is decoded (a 400-megapixel PNG here)."""
    import base64

    import cv2

    ok, png = cv2.imencode(".png", frame_with_square(30, 40))
    assert ok
    image = b64(png.tobytes())
    shape = {"type": "rectangle", "points": [30, 40, 70, 80]}
    start = facade.invoke("labelpilot-tracker", {"image": image, "shapes": [shape],
                                                 "states": []})
    assert start.status_code == 200, start.text
    (state,) = start.json()["states"]
    state["template"] = base64.b64encode(huge_png(20_000, 20_000)).decode()
    body = {"image": image, "shapes": [None], "states": [state]}
    started = time.perf_counter()
    response = facade.invoke("labelpilot-tracker", body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.text
    assert "template is unusable" in response.json()["error"]
    assert elapsed < 1.0, f"the forged template took {elapsed:.2f} s"


@pytest.mark.parametrize("name, body, headers, status, fragment", [
    ("labelpilot-shapes", None, {"x-nuclio-function-name": ""}, 400, "x-nuclio-function-name"),
    ("nope", {"image": "aGk="}, None, 404, "no function 'nope'"),
    ("labelpilot-shapes", {}, None, 400, "image"),
    ("labelpilot-shapes", {"image": "%%%"}, None, 400, "base64"),
    ("labelpilot-shapes", {"image": "aGVsbG8="}, None, 400, "not an image"),
    ("labelpilot-shapes", {"image": "aGk=", "threshold": 5}, None, 400, "threshold"),
    ("labelpilot-shapes", [1, 2], None, 400, "JSON object"),
    ("labelpilot-tracker", {"image": "aGk=", "shapes": [None], "states": [None, None]}, None,
     400, "one state per shape"),
    ("labelpilot-tracker", {"image": "aGk=", "shapes": [], "states": []}, None, 400,
     "nothing to track"),
    ("labelpilot-sam", {"image": "aGk=", "pos_points": [[1]]}, None, 400, "pos_points"),
])
def test_malformed_calls_get_4xx_json_and_the_server_keeps_serving(
        facade, name, body, headers, status, fragment):
    call_headers = {**NUCLIO_HEADERS, "x-nuclio-function-name": name, **(headers or {})}
    response = requests.post(f"{facade.url}/api/function_invocations", headers=call_headers,
                             data=json.dumps(body if body is not None else {"image": "aGk="}),
                             timeout=30)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert requests.get(f"{facade.url}/api/functions", timeout=30).status_code == 200


def signed(body: dict, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"Content-Type": "application/json", "X-Signature-256": f"sha256={digest}"}


def test_webhook_signature_ping_and_completed_job_queues_one_training(facade, redis_url):
    url = f"{facade.url}/cvat/webhook"
    raw, headers = signed({"event": "ping", "webhook_id": 3, "sender": {"username": "a"}})
    assert requests.post(url, data=raw, headers=headers, timeout=10).json()["event"] == "ping"
    _, bad = signed({"event": "ping"}, secret="wrong")
    refused = requests.post(url, data=raw, headers=bad, timeout=10)
    assert refused.status_code == 401 and "secret" in refused.json()["error"]
    unsigned = requests.post(url, data=raw, headers={"Content-Type": "application/json"},
                             timeout=10)
    assert unsigned.status_code == 401 and "X-Signature-256" in unsigned.json()["error"]
    task = 900000 + int(uuid.uuid4().int % 1000)
    event = {"event": "update:job", "webhook_id": 3, "sender": {"username": "ann"},
             "job": {"id": 5, "task_id": task, "project_id": None, "state": "completed",
                     "stage": "annotation"}, "before_update": {"state": "in progress"}}
    first = requests.post(url, data=signed(event)[0], headers=signed(event)[1], timeout=10)
    assert first.status_code == 202, first.text
    assert first.json()["train"] == f"task {task}" and first.json()["queue"] == "enqueued"
    second = requests.post(url, data=signed(event)[0], headers=signed(event)[1], timeout=10)
    assert second.json()["job"] == first.json()["job"]
    assert second.json()["queue"] == "coalesced"
    job = Job.fetch(first.json()["job"], connection=redis.Redis.from_url(redis_url))
    assert job.kwargs["kind"] == "task" and job.kwargs["ident"] == task
    assert job.meta["key"] == f"cvat-task-{task}"
    job.cancel()
    job.delete()
    other = {**event, "before_update": {"state": "completed"}}  # no change: nothing to do
    assert requests.post(url, data=signed(other)[0], headers=signed(other)[1],
                         timeout=10).json()["status"] == "ignored"
    broken = requests.post(url, data=signed({"job": 1})[0], headers=signed({"job": 1})[1],
                           timeout=10)
    assert broken.status_code == 400 and "event" in broken.json()["error"]


def test_training_from_cvat_snapshots_publishes_new_detectors(facade, redis_url, tmp_path):
    """cvat-sdk models → snapshots (rectangles; skeletons) → the coalesced RQ jobs on a real
    worker → versions that GET /api/functions lists at once and that answer detector calls."""
    from labelpilot.adapters.cvat.training import request_cvat_training
    from labelpilot.jobs import CVAT_JOB

    base = 800000 + int(uuid.uuid4().int % 1000) * 2
    detect_task, pose_task = base, base + 1
    images = generate_images(tmp_path / "img", 24, seed=77)
    snapshots = {detect_task: write_snapshot(tmp_path / "detect", images),
                 pose_task: write_pose_snapshot(tmp_path / "pose", images)}
    connection = redis.Redis.from_url(redis_url)
    os.environ["REDIS_URL"] = redis_url
    jobs = {}
    for task, snapshot in snapshots.items():
        # two epochs from the YAML find next to nothing: floor 0 publishes them anyway (the
        # publishing is under test here, not the model)
        save_params(connection, f"cvat-task-{task}", epochs=2, imgsz=160, batch=8,
                    first_version_floor=0.0)
        jobs[task] = request_cvat_training(connection, CVAT_JOB, "task", task,
                                           {"event": "test"}, snapshot=str(snapshot)).job_id
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "labelpilot", "worker"], cwd=REPO,
                              env=facade.env, stdout=open(log, "ab"),  # noqa: SIM115
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        for job_id in jobs.values():
            while True:
                job = Job.fetch(job_id, connection=connection)
                status = job.get_status(refresh=True)
                if status in ("finished", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(2)
            assert status == "finished", f"{status}: {job.exc_info}\n{log.read_text()[-3000:]}"
            assert job.meta["phase"] == "done" and job.meta["version"] == "v1"
    finally:
        stop_processes([worker])
    listed = facade.functions()
    image = generate_images(tmp_path / "probe", 1, seed=78)[0]

    detector = cvat_parse(listed[f"labelpilot-cvat-task-{detect_task}"])
    assert detector["labels"] == list(CLASSES) and detector["kind"] == "detector"
    assert f"cvat-task-{detect_task}-v1" in detector["description"]
    answer = facade.invoke(detector["id"], {"image": b64(image.path.read_bytes()),
                                            "threshold": 0.01})
    assert answer.status_code == 200, answer.text
    assert all(s["label"] in CLASSES and s["type"] == "rectangle" for s in answer.json())

    pose = cvat_parse(listed[f"labelpilot-cvat-task-{pose_task}"])
    (skeleton,) = pose["spec"]
    assert (skeleton["name"], skeleton["type"]) == ("tri", "skeleton")
    assert [s["name"] for s in skeleton["sublabels"]] == ["top", "right", "left"]
    answer = facade.invoke(pose["id"], {"image": b64(image.path.read_bytes()), "threshold": 0.0})
    assert answer.status_code == 200, answer.text
    assert answer.json(), "an untrained pose model still proposes something at threshold 0"
    for item in answer.json():
        assert item["type"] == "skeleton" and item["label"] == "tri"
        assert [e["label"] for e in item["elements"]] == ["top", "right", "left"]
        assert all(e["type"] == "points" and len(e["points"]) == 2 and e["outside"] in (0, 1)
                   for e in item["elements"])


def test_facade_answers_only_on_its_own_ports(facade):
    """With LABELPILOT_CVAT_PORT set, the main port (Label Studio's, behind basic auth) has no
    facade even with the right credentials, and the facade's ports (its own, direct mode) have
    no Label Studio or admin endpoints."""
    auth = ("ls", "secret")
    for method, path in (("GET", "/api/functions"), ("GET", "/api/functions/labelpilot-shapes"),
                         ("POST", "/api/function_invocations"), ("POST", "/"),
                         ("POST", "/cvat/webhook")):
        for creds in (None, auth):
            refused = requests.request(method, f"{facade.main}{path}", auth=creds, timeout=30,
                                       json={"image": "aGk="}, headers={
                                           **NUCLIO_HEADERS,
                                           "x-nuclio-function-name": "labelpilot-shapes"})
            assert refused.status_code == 404, (path, refused.text)
            assert "LABELPILOT_CVAT_PORT" in refused.json()["error"]
    assert requests.get(f"{facade.main}/health", auth=auth, timeout=30).status_code == 200
    for base in (facade.url, f"http://127.0.0.1:{facade.direct[0]}"):
        for method, path in (("GET", "/health"), ("GET", "/"), ("POST", "/setup"),
                             ("POST", "/predict"), ("POST", "/webhook"), ("GET", "/jobs"),
                             ("GET", "/metrics"), ("GET", "/admin/models")):
            refused = requests.request(method, f"{base}{path}", auth=auth, json={}, timeout=30)
            assert refused.status_code == 404, (base, path, refused.text)
            assert "only the CVAT facade" in refused.json()["error"]


def test_only_versions_trained_from_cvat_are_offered_by_default(facade, redis_url,
                                                                shapes_model):
    """LABELPILOT_CVAT_STORE_KEYS defaults to cvat-*: a Label Studio project's model is not
    CVAT's to list or invoke."""
    from labelpilot.backends.model_store import ModelStore

    store = ModelStore(Path(facade.env["MODEL_DIR"]) / "store", redis.Redis.from_url(redis_url))
    n = 700000 + uuid.uuid4().int % 1000
    for key in (f"ls-{n}-label", f"cvat-task-{n}"):
        version = store.write_version(key, shapes_model, {"task": "detect",
                                                          "class_names": list(CLASSES)})
        store.promote(key, version.version)
    listed = facade.functions()
    assert f"labelpilot-cvat-task-{n}" in listed
    assert not [name for name in listed if name.startswith("labelpilot-ls-")]
    hidden = facade.invoke(f"labelpilot-ls-{n}-label", {"image": "aGk="})
    assert hidden.status_code == 404 and "no function" in hidden.json()["error"]


def test_a_facade_sharing_the_main_port_needs_the_basic_auth(tmp_path, redis_url, shapes_model):
    """LABELPILOT_CVAT_PORT=0 puts the facade on the main port: behind the same basic auth as
    the Label Studio endpoints."""
    from tests.conftest import start_backend

    auth = ("ls", "secret")
    server = start_backend(tmp_path, {
        "REDIS_URL": redis_url, "LABELPILOT_CVAT_PORT": "0", "LABELPILOT_PRELOAD": "",
        "LABELPILOT_CVAT_FUNCTIONS": f"shapes={shapes_model}", "LABELPILOT_CVAT_TRACKER": "1",
        "BASIC_AUTH_USER": auth[0], "BASIC_AUTH_PASS": auth[1]}, workers=1, auth=auth)
    try:
        for method, path in (("GET", "/api/functions"), ("POST", "/api/function_invocations"),
                             ("GET", "/api/functions/labelpilot-shapes"),
                             ("POST", "/cvat/webhook")):
            denied = requests.request(method, f"{server.url}{path}", json={}, timeout=30,
                                      headers={"x-nuclio-function-name": "labelpilot-tracker"})
            assert denied.status_code == 401, (path, denied.text)
            assert "basic auth" in denied.json()["error"]
        listed = requests.get(f"{server.url}/api/functions", auth=auth, timeout=60)
        assert listed.status_code == 200 and "labelpilot-shapes" in listed.json()
        tracked = requests.post(f"{server.url}/api/function_invocations", auth=auth, timeout=60,
                                headers={"x-nuclio-function-name": "labelpilot-tracker"},
                                json={"image": "aGk=", "shapes": [], "states": []})
        assert tracked.status_code == 400 and "nothing to track" in tracked.json()["error"]
    finally:
        server.stop()
