"""A project's band mapping end to end: settings (Redis, CLI, admin HTTP), /predict through the
in-process app with the trained shapes model, SAM's image fetch, training samples and the
version info. The images are 6-band 16-bit TIFFs whose scene lives in bands 4-6 only."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import redis
import tifffile

from labelpilot.adapters.label_studio.config import parse_label_config
from labelpilot.adapters.label_studio.image_source import ImageSource
from labelpilot.adapters.label_studio.interactive import InteractiveSam
from labelpilot.adapters.label_studio.payloads import Task
from labelpilot.adapters.label_studio.sam_config import sam_setups
from labelpilot.adapters.label_studio.training import (
    collect_samples,
    trainable_control,
    training_classes,
)
from labelpilot.backends.bands import BandMapping
from labelpilot.backends.images import decode_image
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.sam import SamModels, SamOptions
from labelpilot.label_config import load
from labelpilot.synthetic import make_image
from labelpilot.trainers.band_settings import ProjectBands, load_band_mapping
from labelpilot.trainers.pipeline import TrainParams, TrainRequest, run_training
from labelpilot.trainers.settings import load_params, save_params
from tests.helpers import GeneratedImage, ground_truth_result, run_cli, serve_directory

CONFIG = load("detection_shapes")
PLAN = parse_label_config(CONFIG)
CONTROL = trainable_control(PLAN)
SCENE_BANDS = "6,5,4"  # bands 4, 5, 6 hold B, G, R of the scene; bands 1-3 are flat


def six_band_tiff(scene_bgr: np.ndarray) -> bytes:
    """(H, W, 6) uint16: flat bands 1-3 (nothing to see), the scene's B, G, R as 16-bit in
    bands 4-6 (x257: the full 16-bit range, so a 0,100 stretch gives the 8-bit scene back)."""
    height, width = scene_bgr.shape[:2]
    stack = np.full((height, width, 6), 20000, np.uint16)
    stack[:, :, 3:] = scene_bgr.astype(np.uint16) * 257
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack, photometric="minisblack", planarconfig="contig")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list]]:
    """Served 6-band TIFFs of generated shape scenes, with their boxes."""
    directory = tmp_path_factory.mktemp("spectra")
    rng = random.Random(11)
    made = []
    for index in range(6):
        sample = make_image(rng, 160)
        name = f"scene{index}.tif"
        (directory / name).write_bytes(six_band_tiff(sample.image))
        made.append((name, sample))
    with serve_directory(directory) as url:
        yield url, made


def test_project_settings_check_normalise_and_cache_the_mapping(redis_url):
    connection = redis.Redis.from_url(redis_url)
    project = "ls-bands-settings"
    assert load_band_mapping(connection, project) is None  # default: nothing to map
    saved = save_params(connection, project, bands=" 4, 1,2", stretch="1, 99")
    assert (saved.bands, saved.stretch) == ("4,1,2", "1,99")
    assert load_params(connection, project).bands == "4,1,2"
    assert load_band_mapping(connection, project) == BandMapping((4, 1, 2), 1.0, 99.0)
    with pytest.raises(ValueError, match="'x' is not a band number"):
        save_params(connection, project, bands="4,x,2")
    with pytest.raises(ValueError, match="low below high"):
        save_params(connection, project, stretch="99,1")
    assert load_params(connection, project).bands == "4,1,2", "a refused change keeps the old"
    cached = ProjectBands(connection, ttl=60)
    assert cached.get(project) == BandMapping((4, 1, 2), 1.0, 99.0)
    save_params(connection, project, bands="1")
    assert cached.get(project) == BandMapping((4, 1, 2), 1.0, 99.0), "cached, no Redis read"
    assert ProjectBands(connection, ttl=0).get(project) == BandMapping((1,), 1.0, 99.0)


def test_the_cli_sets_and_refuses_band_mappings(env):
    done = run_cli(
        "settings", "ls-bands-cli", "--bands", "4,1,2", "--stretch", "1,99", env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "bands=4,1,2 stretch=1,99" in done.stdout
    bad = run_cli("settings", "ls-bands-cli", "--bands", "4,1", env=env, timeout=120)
    assert bad.returncode != 0
    assert "give 3 bands for R,G,B" in bad.stderr + bad.stdout


def test_admin_http_sets_and_refuses_band_mappings(make_client):
    client = make_client(LABELPILOT_ADMIN_TOKEN="admin-secret")
    auth = {"Authorization": "Bearer admin-secret"}
    path = "/admin/projects/ls-bands-http/settings"
    assert client.get(path, headers=auth).json["bands"] == "auto"
    saved = client.put(path, headers=auth, json={"bands": "4,1,2", "stretch": "2,99.5"})
    assert saved.status_code == 200
    assert (saved.json["bands"], saved.json["stretch"]) == ("4,1,2", "2,99.5")
    bad = client.put(path, headers=auth, json={"bands": "5,x"})
    assert bad.status_code == 400
    assert "'x' is not a band number" in bad.json["error"]


def test_predict_sees_the_scene_only_with_the_project_mapping(make_client, redis_url, scenes):
    url, made = scenes
    connection = redis.Redis.from_url(redis_url)
    save_params(connection, "ls-9102", bands=SCENE_BANDS, stretch="0,100")
    save_params(connection, "ls-9103", bands="9,1,2")  # the files have 6 bands
    client = make_client()

    def predict(project: int) -> list[dict]:
        body = {
            "tasks": [
                {"id": i, "data": {"image": f"{url}/{name}"}}
                for i, (name, _) in enumerate(made[:3])
            ],
            "project": f"{project}.1700000000",
            "label_config": CONFIG,
        }
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.json
        return response.json["results"] + response.json.get("errors", [])

    unmapped = predict(9101)  # no mapping: bands 1-3, flat → a black image
    assert all(r["result"] == [] for r in unmapped), unmapped
    missing = predict(9103)
    errors = [e["error"] for e in missing if "error" in e and "task" in e]
    assert len(errors) == 3 and all(
        "band 9 does not exist: the image has 6 bands" in e for e in errors
    ), missing
    mapped = predict(9102)[:3]
    for result, (_, sample) in zip(mapped, made[:3], strict=True):
        found = {r["value"]["rectanglelabels"][0].lower() for r in result["result"]}
        assert found & {b.class_name for b in sample.boxes}, (found, sample.boxes)


def test_sam_fetches_the_mapped_image_and_caches_per_mapping(scenes, tmp_path):
    url, made = scenes
    setup = next(iter(sam_setups(load("sam_brush")).values()))
    interactive = InteractiveSam(SamModels(SamOptions(), ModelLocator(tmp_path)))
    source = ImageSource(allowed_hosts=frozenset({"127.0.0.1"}))
    task = Task(id=1, data={setup.image_key: f"{url}/{made[0][0]}"})
    mapping = BandMapping.parse(SCENE_BANDS, "0,100")
    mapped = interactive.fetch_image(task, setup, source, mapping)
    for channel in range(3):  # B, G, R of the scene, each min-max stretched
        scene = made[0][1].image[:, :, channel].ravel()
        assert np.corrcoef(mapped[:, :, channel].ravel(), scene)[0, 1] > 0.99
    unmapped = interactive.fetch_image(task, setup, source)
    assert unmapped.max() == 0, "same file, default mapping: another cache entry"


@pytest.mark.slow
def test_training_writes_mapped_images_and_the_version_records_the_mapping(
    tmp_path, redis_url, scenes, shapes_model
):
    url, made = scenes
    mapping = BandMapping.parse(SCENE_BANDS, "0,100")
    tasks = []
    for index, (name, sample) in enumerate(made):
        image_path = tmp_path / f"gt{index}.png"
        cv2.imwrite(str(image_path), sample.image)
        truth = GeneratedImage(image_path, sample.boxes, 160)
        tasks.append(
            {
                "id": index + 1,
                "data": {"image": f"{url}/{name}"},
                "annotations": [
                    {
                        "id": 50 + index,
                        "result": ground_truth_result(truth),
                        "completed_by": 1,
                        "updated_at": "2026-01-01",
                    }
                ],
            }
        )
    work = tmp_path / "pulled"
    work.mkdir()
    pulled = collect_samples(
        tasks,
        PLAN,
        CONTROL,
        ImageSource(allowed_hosts=frozenset({"127.0.0.1"})),
        work,
        bands=mapping,
    )
    assert len(pulled.samples) == len(made)
    for sample, (name, _) in zip(pulled.samples, made, strict=True):
        written = decode_image(sample.image.read_bytes())
        served = ImageSource(allowed_hosts=frozenset({"127.0.0.1"})).fetch(f"{url}/{name}")
        assert (written == decode_image(served, bands=mapping)).all(), "what /predict sees"
        assert written.max() > 0, "the mapped scene, not the flat bands 1-3"

    store = ModelStore(tmp_path / "store", redis.Redis.from_url(redis_url))
    params = TrainParams(epochs=1, imgsz=160, batch=8, bands=SCENE_BANDS, stretch="0,100")
    request = TrainRequest(
        key="test-bands-detect",
        task="detect",
        class_names=training_classes(PLAN, CONTROL),
        samples=pulled.samples,
        base_model=str(shapes_model),
        params=params,
    )
    result = run_training(request, store)
    info = store.versions("test-bands-detect")[0].info()
    assert info["bands"] == "6,5,4 stretch 0,100" == result["bands"]
    assert BandMapping.parse(info["bands"]) == mapping
    assert (info["params"]["bands"], info["params"]["stretch"]) == (SCENE_BANDS, "0,100")


def test_cvat_training_frames_are_written_mapped(tmp_path):
    """CVAT's source with the task's mapping: the frames it writes for training are the mapped
    8-bit images, as for Label Studio."""
    from types import SimpleNamespace

    from labelpilot.adapters.cvat.training import CvatSource
    from tests.helpers import generate_images
    from tests.test_cvat import FakeTask

    class SpectralFrames(FakeTask):
        def get_frame(self, index: int, quality: str | None = None):  # type: ignore[no-untyped-def]
            scene = cv2.imread(str(self.images[index].path))
            return io.BytesIO(six_band_tiff(scene))

    images = generate_images(tmp_path / "img", 4, seed=12)
    task = SpectralFrames(5, images, completed=(0, 3))
    client = SimpleNamespace(tasks=SimpleNamespace(retrieve=lambda i: task))
    mapping = BandMapping.parse(SCENE_BANDS, "0,100")
    pulled = CvatSource("task", 5, lambda: client, bands=mapping).write_samples(
        tmp_path / "job", lambda _: None
    )
    assert [s.sample_id for s in pulled.samples] == ["cvat-t5-f0", "cvat-t5-f1", "cvat-t5-f3"]
    for sample in pulled.samples:
        index = int(sample.provenance["frame"])
        expected = decode_image(six_band_tiff(cv2.imread(str(images[index].path))), bands=mapping)
        assert (decode_image(sample.image.read_bytes()) == expected).all()
        assert expected.max() > 0
