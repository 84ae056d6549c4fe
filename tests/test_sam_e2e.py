"""Interactive SAM end to end: a real Label Studio 1.23.2 calls the gunicorn backend through its
`/api/ml/{id}/interactive-annotating` endpoint (as the labeling UI does), masks come back as
brush RLE or polygons; batch pre-annotation prewarms the embedding; workers share encodes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis
import requests

from labelpilot.backends.interactive import PointPrompt, Prompt
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.sam import SamModels, SamOptions
from labelpilot.label_config import load
from tests.conftest import ARTIFACTS, BackendServer, start_backend

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SAM_REF = "random:mobile_sam"


@pytest.fixture(scope="module")
def sam_backend(tmp_path_factory: pytest.TempPathFactory, redis_url: str
                ) -> Iterator[BackendServer]:
    tmp = tmp_path_factory.mktemp("sam-backend")
    server = start_backend(tmp, {"REDIS_URL": redis_url, "LABELPILOT_SAM_MODEL": SAM_REF})
    yield server
    server.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "sam-backend.log").write_bytes(server.log.read_bytes())


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import ultralytics

    directory = tmp_path_factory.mktemp("sam-photos")
    assets = Path(ultralytics.__file__).parent / "assets"
    bus, zidane = cv2.imread(str(assets / "bus.jpg")), cv2.imread(str(assets / "zidane.jpg"))
    out = {"bus": directory / "bus.png", "zidane": directory / "zidane.png",
           "street": directory / "street.png", "fresh": directory / "fresh.png"}
    cv2.imwrite(str(out["bus"]), bus)
    cv2.imwrite(str(out["zidane"]), zidane)
    cv2.imwrite(str(out["street"]), bus[300:900, 0:810])
    cv2.imwrite(str(out["fresh"]), zidane[:, 300:1100])
    return out


def make_project(ls_admin, sam_backend, config: str, paths: list[Path], title: str
                 ) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    pid = ls_admin.create_project(title, config)
    task_ids = ls_admin.upload_images(pid, paths)
    backend_id = ls_admin.connect_backend(pid, sam_backend.url, interactive=True)
    return {"id": pid, "backend": backend_id, "tasks": dict(zip([p.stem for p in paths],
                                                                task_ids, strict=True))}


@pytest.fixture(scope="module")
def brush_project(ls_admin, sam_backend, photos):  # type: ignore[no-untyped-def]
    return make_project(ls_admin, sam_backend, load("sam_brush"),
                        [photos["bus"], photos["street"], photos["fresh"]], "sam brush e2e")


def interactive(ls_admin, backend_id: int, task_id: int,
                regions: list[dict]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What the LS UI does on a smart-tool click (Auto-Annotation on)."""
    response = requests.post(f"{ls_admin.url}/api/ml/{backend_id}/interactive-annotating",
                             headers=ls_admin.headers(),
                             json={"task": task_id, "context": {"result": regions}}, timeout=120)
    response.raise_for_status()
    return dict(response.json())


def keypoint(x: float, y: float, label: str, size: tuple[int, int], positive: bool = True
             ) -> dict:
    return {"type": "keypointlabels", "from_name": "point", "to_name": "image",
            "original_width": size[0], "original_height": size[1], "image_rotation": 0,
            "is_positive": positive, "id": "kp1", "origin": "manual",
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def rectangle(x: float, y: float, w: float, h: float, label: str, size: tuple[int, int]) -> dict:
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image",
            "original_width": size[0], "original_height": size[1], "image_rotation": 0,
            "id": "rect1", "origin": "manual",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}


def embedding_source(response: requests.Response) -> str:
    """Where the backend got the embedding (also on a 422 for an empty random-weight mask)."""
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        return str(response.json()["embedding"])
    return response.headers["X-Labelpilot-Sam-Embedding"]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def test_smart_click_through_label_studio_returns_the_models_brush_mask(
        ls_admin, brush_project, photos):
    from label_studio_sdk.converter.brush import decode_rle

    image = cv2.imread(str(photos["bus"]))
    height, width = image.shape[:2]
    sam = SamModels(SamOptions(), ModelLocator(Path("models"), download=False)).get(
        SAM_REF)  # the same seeded weights the backend loaded
    points = (PointPrompt(0.5 * width, 0.6 * height), PointPrompt(0.2 * width, 0.1 * height,
                                                                   positive=False))
    expected = sam.segment(image, Prompt(points=points))
    assert expected.mask.any(), "pick another click: the random model's mask is empty here"
    answer = interactive(ls_admin, brush_project["backend"], brush_project["tasks"]["bus"], [
        keypoint(50, 60, "Vehicle", (width, height)),
        keypoint(20, 10, "Vehicle", (width, height), positive=False)])
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "mask"
    assert region["value"]["brushlabels"] == ["Vehicle"]
    assert (region["original_width"], region["original_height"]) == (width, height)
    assert answer["data"]["model_version"] == "sam-mobile_sam-random"
    got = np.asarray(decode_rle(region["value"]["rle"])).reshape(height, width, 4)[:, :, 3] > 0
    # the backend may have picked the ONNX decoder: equal up to float rounding at the edges
    assert mask_iou(got, expected.mask) > 0.98
    assert region["score"] == pytest.approx(expected.score, abs=1e-3)


def test_box_and_points_give_a_polygon_in_a_polygon_project(ls_admin, sam_backend, photos):
    project = make_project(ls_admin, sam_backend, load("sam_polygon"), [photos["zidane"]],
                           "sam polygon e2e")
    image = cv2.imread(str(photos["zidane"]))
    height, width = image.shape[:2]
    answer = interactive(ls_admin, project["backend"], project["tasks"]["zidane"], [
        rectangle(10, 10, 60, 80, "Person", (width, height)),
        keypoint(40, 50, "Person", (width, height))])
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"] == ["Person"]
    points = np.asarray(region["value"]["points"])
    assert len(points) >= 3 and points.min() >= 0 and points.max() <= 100


def test_a_bad_click_is_refused_and_the_backend_log_says_why(ls_admin, brush_project,
                                                            sam_backend):
    answer = interactive(ls_admin, brush_project["backend"], brush_project["tasks"]["bus"],
                         [keypoint(50, 50, "Banana", (810, 1080))])
    # LS passes on only the status of a failed call; the why is in our answer and our log
    assert "422" in " ".join(answer["errors"]) and "data" not in answer
    deadline = time.monotonic() + 5
    while "not a label of any output control" not in sam_backend.log.read_text():
        assert time.monotonic() < deadline, sam_backend.log.read_text()[-2000:]
        time.sleep(0.1)


def test_retrieving_predictions_prewarms_so_the_first_click_is_a_cache_hit(
        ls_admin, brush_project, sam_backend, photos, redis_url):
    client = redis.Redis.from_url(redis_url)
    before = set(client.scan_iter("labelpilot:sam:emb:*"))
    ls_admin.retrieve_predictions(brush_project["id"])
    assert ls_admin.predictions(brush_project["id"]) == [], "SAM stores no empty predictions"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # bus was encoded before; street and fresh are new
        new = set(client.scan_iter("labelpilot:sam:emb:*")) - before
        if len([k for k in new if not k.endswith(b":encoding")]) >= 2:
            break
        time.sleep(0.25)
    else:
        pytest.fail("prewarm did not store the embeddings")
    task = next(t for t in ls_admin.tasks(brush_project["id"])
                if t["id"] == brush_project["tasks"]["street"])
    for _ in range(2):  # whichever worker answers: its own memory or the shared Redis tier
        response = requests.post(f"{sam_backend.url}/predict", json={
            "tasks": [{"id": task["id"], "data": task["data"]}],
            "project": f"{brush_project['id']}.0", "label_config": load("sam_brush"),
            "params": {"context": {"result": [keypoint(50, 50, "Vehicle", (810, 600))]}}},
            timeout=60)
        assert embedding_source(response) in ("memory", "redis")
    started = time.perf_counter()
    answer = interactive(ls_admin, brush_project["backend"], task["id"],
                         [keypoint(30, 70, "Object", (810, 600))])
    assert "errors" not in answer and answer["data"]["result"], answer
    assert time.perf_counter() - started < 3.0


def test_concurrent_first_clicks_on_both_workers_encode_once(ls_admin, brush_project,
                                                             sam_backend, photos):
    image = cv2.imread(str(photos["bus"]))
    cv2.imwrite(str(photos["bus"].with_name("concurrent.png")), image[::-1])  # unseen content
    task_ids = ls_admin.upload_images(brush_project["id"],
                                      [photos["bus"].with_name("concurrent.png")])
    task = next(t for t in ls_admin.tasks(brush_project["id"]) if t["id"] == task_ids[0])

    def click(i: int) -> str:
        response = requests.post(f"{sam_backend.url}/predict", json={
            "tasks": [{"id": task["id"], "data": task["data"]}],
            "project": f"{brush_project['id']}.0", "label_config": load("sam_brush"),
            "params": {"context": {"result": [keypoint(20 + 15 * i, 50, "Vehicle",
                                                       (810, 1080))]}}}, timeout=120)
        return embedding_source(response)

    with ThreadPoolExecutor(6) as pool:
        sources = list(pool.map(click, range(6)))
    assert sources.count("encoded") == 1, sources
    assert set(sources) <= {"encoded", "waited", "memory", "redis"}, sources


# --- the real labeling UI in a headless browser ------------------------------------------------

BROWSER_SCRIPT = Path(__file__).parent / "browser" / "sam_click.mjs"
PLAYWRIGHT_DIR = Path(__file__).resolve().parent.parent / ".cache" / "playwright"


def browser_tools() -> tuple[str, str, Path]:
    """node, chromium and an installed playwright-core; fails (never skips) when missing."""
    import shutil
    import subprocess

    node, npm = shutil.which("node"), shutil.which("npm")
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path(
        "/usr/bin/chromium").exists() else None)
    missing = [name for name, found in (("node", node), ("npm", npm), ("chromium", chromium))
               if not found]
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: install Debian's chromium "
                    "and Node.js/npm (apt-get install chromium nodejs npm)")
    assert node and npm and chromium
    package = PLAYWRIGHT_DIR / "node_modules" / "playwright-core"
    if not (package / "package.json").exists():
        done = subprocess.run([npm, "install", "--prefix", str(PLAYWRIGHT_DIR), "--no-audit",
                               "--no-fund", "playwright-core"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            pytest.fail(f"npm install playwright-core failed:\n{done.stderr[-2000:]}")
    return node, chromium, PLAYWRIGHT_DIR / "node_modules"


def test_annotator_clicks_with_the_smart_keypoint_tool_and_sees_the_mask(
        label_studio, ls_admin, brush_project, tmp_path):
    import json
    import subprocess

    node, chromium, modules = browser_tools()
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "sam-browser-click.png"
    config = tmp_path / "browser.json"
    config.write_text(json.dumps({
        "playwright": str(modules), "chromium": chromium, "url": label_studio.url,
        "email": label_studio.username, "password": label_studio.password,
        "project": brush_project["id"], "task": brush_project["tasks"]["bus"],
        "labelIndex": 5,  # the smart KeyPointLabels' "Vehicle" (after the 3 brush labels)
        "x": 0.5, "y": 0.6, "screenshot": str(screenshot)}))
    done = subprocess.run([node, str(BROWSER_SCRIPT), str(config)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"], report
    assert screenshot.exists()
    assert report["calls"] and report["calls"][0]["status"] == 200, report
    assert report["calls"][0]["regions"] == 1 and report["calls"][0]["type"] == "brushlabels"
