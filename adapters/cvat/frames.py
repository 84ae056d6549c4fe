"""Video frames as a new CVAT task of images (`labelpilot frames --cvat-project P`).

The task is named `<video name> · frames (labelpilot)` and belongs to a project (its labels) or
carries its own labels. Its frames are PNGs in time order named `f<frame>_t<seconds>s.png`, so
each keeps the video frame number (Label Studio's numbering at the rate used) and timestamp it
came from; CVAT shows the name under every frame and keeps it in exports.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2

from labelpilot.adapters.cvat.selection import create_image_task
from labelpilot.adapters.cvat.training import store_key
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore, serving_weights
from labelpilot.backends.video import VideoFrame
from labelpilot.trainers.frame_sampling import frame_file_name

TASK_SUFFIX = " · frames (labelpilot)"


class FramesTaskError(ValueError):
    """CVAT could not take the frames as a task; the message says why."""


def task_name(video_name: str) -> str:
    return f"{video_name}{TASK_SUFFIX}"


def frames_model(store: ModelStore, locator: ModelLocator, project_id: int | None,
                 default_model: str) -> tuple[str, str]:
    """(weights, model version) for uncertainty sampling: the project's served detector,
    else `default_model`."""
    keys = [store_key("project", project_id)] if project_id is not None else []
    return serving_weights(store, keys, locator, default_model)


def create_frames_task(client: Any, frames: Iterable[VideoFrame], name: str, *,
                       project_id: int | None = None, labels: Sequence[str] = (),
                       timeout: float = 600) -> tuple[int, int, list[str]]:
    """A new CVAT task of the frames (in the order given, one job) in project `project_id`,
    or with `labels`; returns (task id, job id, the frames' file names in task order)."""
    if project_id is None and not labels:
        raise FramesTaskError("give a CVAT project (--cvat-project) or the labels of the new "
                              "task (--cvat-labels)")
    with tempfile.TemporaryDirectory(prefix="cvat-frames-") as tmp:
        paths: list[Path] = []
        for frame in frames:
            path = Path(tmp) / frame_file_name(frame)
            if not cv2.imwrite(str(path), frame.image):
                raise FramesTaskError(f"could not write frame {frame.number} as PNG")
            paths.append(path)
        if not paths:
            raise FramesTaskError("no frames to put in a CVAT task")
        task, job = create_image_task(client, name, paths, project_id=project_id,
                                      labels=[{"name": label} for label in labels],
                                      timeout=timeout)
    return task, job, [p.name for p in paths]
