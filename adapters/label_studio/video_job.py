"""The worker side of long clips: track a task's video and post the prediction to Label Studio
under the project's model_version, once (a prediction of that version already there is kept)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from labelpilot.adapters.label_studio.config import ConfigError, ControlDefaults, parse_label_config
from labelpilot.adapters.label_studio.image_source import ImageSource
from labelpilot.adapters.label_studio.payloads import Task
from labelpilot.adapters.label_studio.results import task_score
from labelpilot.adapters.label_studio.video import (
    VideoJobRequest,
    VideoLimits,
    VideoTaskError,
    fetch_clip,
    track_clip,
)
from labelpilot.backends.tracking import FrameDone
from labelpilot.backends.yolo import YoloModel

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (frames done, frames in total)


def video_job_id(request: VideoJobRequest) -> str:
    """One job per task, control and model version: LS asking twice joins the first."""
    digest = hashlib.sha1(f"{request.control}|{request.model_version}".encode()).hexdigest()
    return f"video-ls-{request.project_id}-{request.task_id}-{digest[:10]}"


def run_video_job(request: VideoJobRequest, label_config: str, images: ImageSource,
                  model: YoloModel, limits: VideoLimits, *, defaults: ControlDefaults,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Track the clip and post the prediction; returns what was done (for the job's result).
    Raises VideoTaskError with the reason when the video cannot be tracked."""
    if request.task_id is None:
        raise VideoTaskError("the request has no task id to post the prediction to")
    try:
        plan = parse_label_config(label_config, defaults)
    except ConfigError as exc:
        raise VideoTaskError(f"the project's label config: {exc}") from exc
    control = next((c for c in plan.controls if c.name == request.control
                    and c.video is not None), None)
    if control is None:
        raise VideoTaskError(f"the label config has no VideoRectangle '{request.control}' now")
    api = images.api
    if _has_version(api.task_predictions(request.task_id), request.model_version):
        return {"task": request.task_id, "posted": False,
                "reason": f"the task already has a prediction of {request.model_version}"}
    task = Task(id=request.task_id, data=request.task_data)
    clip = fetch_clip(task, control, images, limits)
    total = clip.frames
    on_frame: FrameDone | None = None
    if progress is not None:
        progress(0, total)
        on_frame = lambda number: progress(min(number, total), total)  # noqa: E731
    regions = track_clip(clip, control, model, limits, on_frame)
    if _has_version(api.task_predictions(request.task_id), request.model_version):
        return {"task": request.task_id, "posted": False, "tracks": len(regions),
                "reason": "another run posted this version's prediction meanwhile"}
    prediction = api.create_prediction(request.task_id, regions, task_score(regions),
                                       request.model_version)
    log.info("task %s: %d tracks over %d frames posted as prediction %s (%s)",
             request.task_id, len(regions), total, prediction, request.model_version)
    return {"task": request.task_id, "posted": True, "prediction": prediction,
            "tracks": len(regions), "frames": total}


def _has_version(predictions: list[dict[str, Any]], version: str) -> bool:
    return any(p.get("model_version") == version for p in predictions)
