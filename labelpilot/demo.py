"""`labelpilot demo`: a real Label Studio, labelpilot connected to it, a project with predictions.

With internet the demo uses a COCO YOLO (`yolo11n.pt`, downloaded by ultralytics). Without it, it
says so and trains a small detector on generated shapes (~2.5 min once, cached) instead.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.backends.errors import BackendError
from labelpilot.label_config import load
from labelpilot.label_studio_server import REPO, LabelStudioServer
from labelpilot.serving import backend_processes, ensure_redis, wait_healthy
from labelpilot.settings import Settings

log = logging.getLogger(__name__)
PROJECT_TITLE = "labelpilot demo"
SAM_PROJECT_TITLE = "labelpilot demo: SAM clicks"
SHAPE_TASKS = 24
# Offline demo training: small enough to finish in about a minute on a laptop CPU.
OFFLINE_TRAINING = {"epochs": 40, "imgsz": 160, "batch": 8}
DEMO_ADMIN_TOKEN = "labelpilot-demo-admin"  # the dashboard's password unless one is set


@dataclass(frozen=True)
class DemoModel:
    weights: str
    config_name: str
    description: str


def sample_images(directory: Path, with_shapes: bool) -> list[Path]:
    """Real photos shipped in ultralytics and scikit-image (and generated shapes if asked)."""
    import skimage.data
    import ultralytics

    directory.mkdir(parents=True, exist_ok=True)
    paths = [Path(ultralytics.__file__).parent / "assets" / n for n in ("bus.jpg", "zidane.jpg")]
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        target = directory / f"{name}.png"
        if not target.exists():
            image = np.asarray(getattr(skimage.data, name)())
            bgr = image[:, :, ::-1] if image.ndim == 3 else image
            cv2.imwrite(str(target), bgr)
        paths.append(target)
    if with_shapes:  # the offline demo: also what a quality scan should catch
        paths.extend(_flawed_photos(directory, paths))
        from labelpilot.synthetic import make_image

        rng = random.Random(2024)
        for i in range(SHAPE_TASKS):
            target = directory / f"shapes_{i}.png"
            if not target.exists():
                cv2.imwrite(str(target), make_image(rng, 160).image)
            paths.append(target)
    return paths


def _flawed_photos(directory: Path, photos: list[Path]) -> list[Path]:
    """A dark, a blurred and a resized copy of sample photos: findings for the quality scan."""
    flawed = {"dark_coffee.png": (photos[3], lambda im: (im * 0.12).astype(np.uint8)),
              "blurry_chelsea.png": (photos[4], lambda im: cv2.GaussianBlur(im, (0, 0), 6)),
              "bus_small_copy.jpg": (photos[0], lambda im: cv2.resize(
                  im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA))}
    made = []
    for name, (source, change) in flawed.items():
        target = directory / name
        if not target.exists():
            cv2.imwrite(str(target), change(cv2.imread(str(source))))
        made.append(target)
    return made


def choose_model(settings: Settings, requested: str | None) -> DemoModel:
    from labelpilot.backends.yolo import YoloModel
    from labelpilot.runtime import model_locator

    ref = requested or settings.task_model("detect")
    try:
        YoloModel(model_locator(settings).resolve(ref))
        return DemoModel(ref, "detection", f"{ref} (COCO classes)")
    except BackendError as exc:
        if requested:
            raise
        log.warning("%s is not available here (%s).", ref, str(exc).splitlines()[0][:200])
    from labelpilot.shapes_model import DEMO_RECIPE, ensure_shapes_model

    log.warning("Offline fallback: using a half-trained YOLO11n for generated shapes instead "
                "(photos get no boxes from it; label a few shapes_*.png tasks and press 'Start "
                "training' to see it improve).")
    weights = ensure_shapes_model(REPO / ".cache" / "models", DEMO_RECIPE)
    return DemoModel(str(weights), "detection_shapes",
                     "half-trained YOLO11n for generated shapes (offline fallback)")


def _uncertainty_sampling(admin: LabelStudioClient, project: int,
                          predictions: list[dict[str, Any]]) -> str:
    """Let Label Studio serve the least certain task first: Uncertainty sampling over the
    newest labelpilot version's predictions (LS samples among one version's predictions)."""
    if not predictions:
        return ""
    version = max(predictions, key=lambda p: int(p["id"]))["model_version"]
    admin.patch(f"/api/projects/{project}", {"sampling": "Uncertainty sampling",
                                              "model_version": version})
    return ("\n  'Label All Tasks' serves the least certain task first (Uncertainty sampling "
            f"over\n  {version}'s predictions).")


def _find_project(admin: LabelStudioClient, title: str = PROJECT_TITLE) -> int | None:
    return admin.find_project(title)


def choose_sam_model(settings: Settings) -> tuple[str, str]:
    """(ref, description): LABELPILOT_SAM_MODEL, a SAM checkpoint in MODEL_DIR, MobileSAM
    downloaded by ultralytics, else random MobileSAM weights, said loudly (offline)."""
    from labelpilot.backends.sam import parse_sam_ref
    from labelpilot.backends.sam.models import build_network
    from labelpilot.runtime import model_locator

    ref = settings.sam_model.strip()
    if ref:
        return ref, ref
    locator = model_locator(settings)
    model_dir = locator.model_dir
    for name in ("mobile_sam.pt", "sam_vit_b_01ec64.pth", "sam_b.pt"):
        if (model_dir / name).is_file():
            return str(model_dir / name), name
    try:  # ultralytics' release asset, on a connected machine
        build_network(parse_sam_ref("mobile_sam.pt", locator), "cpu")
        return str(model_dir / "mobile_sam.pt"), "MobileSAM (mobile_sam.pt)"
    except BackendError as exc:
        log.warning("mobile_sam.pt is not available here (%s).", str(exc).splitlines()[0][:200])
    log.warning("No SAM checkpoint (LABELPILOT_SAM_MODEL unset, no mobile_sam.pt or "
                "sam_vit_b_01ec64.pth in MODEL_DIR=%s, no download): the SAM demo project uses "
                "RANDOM MobileSAM weights, so clicks return meaningless masks.", model_dir)
    return "random:mobile_sam", "MobileSAM with RANDOM weights (no checkpoint found)"


def _sam_project(admin: LabelStudioClient, backend_url: str, root: Path) -> int:
    """A project with the interactive SAM config; batch predictions prewarm its embeddings."""
    project = _find_project(admin, SAM_PROJECT_TITLE)
    if project is None:
        project = admin.create_project(SAM_PROJECT_TITLE, load("sam_brush"))
        admin.upload_images(project, sample_images(root / "samples", False))
        admin.connect_backend(project, backend_url, interactive=True)
    admin.retrieve_predictions(project)
    return project


def _activity(admin: LabelStudioClient, settings: Settings, project: int) -> str:
    """Annotate, train twice and scan (see `demo_activity`); the lines the demo prints."""
    from labelpilot import jobs
    from labelpilot.adapters.label_studio.training import request_project_training
    from labelpilot.demo_activity import run_activity
    from labelpilot.redis_conn import connect

    connection = connect(settings)
    print("\n  Filling the dashboard: a demo annotator labels the shapes tasks, labelpilot "
          "trains\n  two versions and scans the project (a few minutes; progress below and "
          "in\n  `labelpilot jobs`).", flush=True)
    done = run_activity(
        admin, connection, project,
        train=lambda p, trigger: request_project_training(
            connection, jobs.LABEL_STUDIO_JOB, p, trigger).job_id,
        scan=lambda p: jobs.queue_scan_label_studio(connection, p))
    kept = "; ".join(f"{row['model_version']}: {row['kept']} of {row['predicted']} "
                     f"predicted boxes kept" for row in done.acceptance) or "none measured"
    return (f"  annotated      {done.annotated} shapes tasks (ground truth), trained "
            f"{', '.join(done.versions)}\n  acceptance     {kept}\n"
            f"  quality scan   {done.scan}\n")


def run_demo(settings: Settings, ls_port: int = 18080, backend_port: int = 9090,
             model: str | None = None, wait: bool = True,
             activity: bool = True) -> dict[str, object]:
    root = settings.resolved_data_dir / "demo"
    if "model_dir" not in settings.model_fields_set:  # the demo's own model store
        settings = settings.with_overrides(model_dir=root / "models")
    chosen = choose_model(settings, model)
    sam_ref, sam_description = choose_sam_model(settings)
    with ExitStack() as stack:
        settings = ensure_redis(stack, settings)
        ls = LabelStudioServer(data_dir=root, port=ls_port, template=REPO / ".cache" /
                               "ls-template")
        ls.start()
        stack.callback(ls.stop)
        backend_url = f"http://127.0.0.1:{backend_port}"
        served = settings.with_overrides(
            host="127.0.0.1", port=backend_port, workers=1, threads=4,
            model_detect=chosen.weights, label_studio_url=ls.url, label_studio_api_key=ls.token,
            sam_model=sam_ref, admin_token=settings.admin_token or DEMO_ADMIN_TOKEN)
        server = stack.enter_context(backend_processes(served, extra_env=served.env_of((
            "host", "port", "workers", "threads", "model_dir", "model_detect",
            "label_studio_url", "label_studio_api_key", "sam_model", "admin_token"))))
        wait_healthy(backend_url, server)
        admin = LabelStudioClient(ls.url, ls.token)
        project = _find_project(admin)
        if project is None:
            project = admin.create_project(PROJECT_TITLE, load(chosen.config_name))
            images = sample_images(root / "samples", chosen.config_name == "detection_shapes")
            admin.upload_images(project, images)
            admin.connect_backend(project, backend_url)
            if chosen.config_name == "detection_shapes":
                from labelpilot.redis_conn import connect
                from labelpilot.trainers.settings import save_params

                save_params(connect(settings), f"ls-{project}", **OFFLINE_TRAINING)
        admin.retrieve_predictions(project)
        sam_project = _sam_project(admin, backend_url, root)
        tasks = admin.tasks(project)
        predictions = admin.predictions(project)
        regions = sum(len(p["result"]) for p in predictions)
        sampling = _uncertainty_sampling(admin, project, predictions)
        summary: dict[str, object] = {
            "label_studio": ls.url, "project": project, "tasks": len(tasks),
            "predictions": len(predictions), "regions": regions, "model": chosen.description,
            "sam_project": sam_project, "sam_model": sam_description}
        print(f"""
  Label Studio   {ls.url}/projects/{project}/data
  login          {ls.username} / {ls.password}
  labelpilot     {backend_url}  (/health, /metrics)
  model          {chosen.description}
  tasks          {len(tasks)}, with pre-annotations: {len(predictions)} ({regions} regions)

  SAM clicks     {ls.url}/projects/{sam_project}/data  ({sam_description})
                 open a task, switch on Auto-Annotation, pick the smart keypoint tool and a
                 label, click an object: the mask comes back as a suggestion

  Open a task to see the boxes; sort by "Prediction score" (ascending) to see the least
  certain first: the score is the model's confidence. {sampling}
  Label some tasks, then Settings > Model > Start training; follow it with
  `.venv/bin/labelpilot jobs`. The better version then serves (`labelpilot models list`).
""", flush=True)
        if activity and chosen.config_name == "detection_shapes":
            filled = _activity(admin, settings, project)
            summary["activity"] = filled
            print(filled, flush=True)
        token = served.admin_token.get_secret_value() if served.admin_token else ""
        print(f"""  Dashboard      {backend_url}/dashboard
                 user: any name, password: {token}
                 (versions, acceptance rate, drift, quality findings, jobs)

  Press Ctrl+C to stop.
""", flush=True)
        if wait:
            stopped = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stopped.set())
            try:
                while not stopped.wait(1.0) and server.poll() is None:
                    pass
            except KeyboardInterrupt:
                pass
        return summary
