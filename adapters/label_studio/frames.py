"""Video frames as image tasks of a Label Studio project (`labelpilot frames --ls-project N`).

Each frame is uploaded as a PNG (LS stores it and makes a task whose image is the upload's
`/data/upload/...` URL), then the task's data is set to the image plus where it came from:
`source_video` (the video's URL or path, as given), `timestamp` (seconds into the video) and
`frame` (Label Studio's frame number at the rate used). LS keeps extra data fields as they are:
they show as Data Manager columns (filter and sort by them) and export with the task; only the
config's own `$image` field is rendered.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2

from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.adapters.label_studio.config import ControlDefaults, store_key
from labelpilot.adapters.label_studio.selection import detection_control
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore, serving_weights
from labelpilot.backends.video import VideoFrame
from labelpilot.trainers.frame_sampling import frame_file_name

UPLOAD_CHUNK = 50  # PNGs per import request
Progress = Callable[[dict[str, Any]], None]


class FramesImportError(ValueError):
    """The project cannot take video frames as image tasks; the message says why."""


def image_key(label_config: str) -> str:
    """The task data field the project's <Image> tag reads (`value="$image"` → "image")."""
    from label_studio_sdk.label_interface import LabelInterface

    try:
        objects = LabelInterface(label_config).objects
    except Exception as exc:  # the SDK raises several XML/validation error kinds
        raise FramesImportError(f"the project's label config is not valid: {exc}") from exc
    keys = [str(o.value or "").lstrip("$") for o in objects if o.tag == "Image"]
    keys = [k for k in keys if k]
    if not keys:
        kinds = ", ".join(sorted({o.tag for o in objects})) or "none"
        raise FramesImportError(f"the project has no <Image> tag (its objects: {kinds}): "
                                "video frames become image tasks, so import them into a project "
                                "with an image labelling config")
    return keys[0]


def frames_model(api: LabelStudioClient, project: int, store: ModelStore,
                 locator: ModelLocator, defaults: ControlDefaults | None) -> tuple[str, str]:
    """(weights, model version) the project's detector serves now, for uncertainty sampling
    (SelectionError when the project has no RectangleLabels on an Image)."""
    control = detection_control(api.project(project)["label_config"], defaults)
    key = store_key(project, control)
    return serving_weights(store, [key] if key else [], locator, control.model_ref)


def import_frames(api: LabelStudioClient, project: int, frames: Iterable[VideoFrame],
                  source_video: str, *, progress: Progress | None = None) -> list[int]:
    """Upload the frames as image tasks of `project` (in the order given), each with its
    `source_video`, `timestamp` and `frame`; returns the new task ids in that order. The
    frames are written to PNG files one at a time; at most `UPLOAD_CHUNK` files wait on disk."""
    key = image_key(api.project(project)["label_config"])
    report = progress or (lambda _update: None)
    task_ids: list[int] = []
    with tempfile.TemporaryDirectory(prefix=f"ls-frames-{project}-") as tmp:
        chunk: dict[str, dict[str, Any]] = {}  # file name → the task data besides the image
        for frame in frames:
            name = frame_file_name(frame)
            if not cv2.imwrite(str(Path(tmp) / name), frame.image):
                raise FramesImportError(f"could not write frame {frame.number} as PNG")
            chunk[name] = {"source_video": source_video, "timestamp": round(frame.time, 3),
                           "frame": frame.number}
            if len(chunk) == UPLOAD_CHUNK:
                task_ids += _import_chunk(api, project, key, Path(tmp), chunk)
                chunk = {}
                report({"phase": "importing", "done": len(task_ids)})
        if chunk:
            task_ids += _import_chunk(api, project, key, Path(tmp), chunk)
            report({"phase": "importing", "done": len(task_ids)})
    return task_ids


def _import_chunk(api: LabelStudioClient, project: int, key: str, folder: Path,
                  chunk: dict[str, dict[str, Any]]) -> list[int]:
    """Upload, then give each new task its frame's data. LS does not say which task holds
    which file; it stores `/data/upload/<project>/<random>-<file name>`, so the name tells."""
    paths = [folder / name for name in chunk]
    created = api.upload_images(project, paths)
    by_name: dict[str, int] = {}
    for task_id in created:
        data = dict(api.get(f"/api/tasks/{task_id}").get("data") or {})
        url = next((v for v in data.values() if isinstance(v, str) and _uploaded_name(v)
                    in chunk), None)
        if url is None:
            raise FramesImportError(f"Label Studio made task {task_id} from an upload that "
                                    f"matches no frame (its data: {data})")
        name = _uploaded_name(url)
        api.update_task_data(task_id, {key: url, **chunk[name]})
        by_name[name] = task_id
        (folder / name).unlink(missing_ok=True)
    if len(by_name) != len(chunk):
        raise FramesImportError(f"Label Studio made {len(by_name)} tasks from {len(chunk)} "
                                "uploaded frames")
    return [by_name[name] for name in chunk]


def _uploaded_name(url: str) -> str:
    """The file name in an upload URL (after LS's random prefix and its dash)."""
    return url.rsplit("/", 1)[-1].split("-", 1)[-1]
