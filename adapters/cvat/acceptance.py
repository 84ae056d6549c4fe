"""Acceptance rate for CVAT: what the detector returned for a frame, against what the job
holds when it is completed.

CVAT sends a detector only the image (no task or frame id), so the facade remembers each
full-frame detection under a digest of the decoded pixels (`remember_detection`, kept
`DETECTION_TTL_S`). When a job is completed (`update:job` webhook) a queued job reads the job's
frames and annotations through CVAT's API, finds labelpilot's detection for each frame by the
same digest, and records the comparison per frame: project "cvat-task-<id>", the detector
function's model_version, annotation id "job-<job>-frame-<n>" (a job completed again replaces
its frames' counts). Frames labelpilot never detected on are counted as ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import redis

from labelpilot.adapters.cvat.annotations import (
    LabelInfo,
    by_frame,
    get,
    label_infos,
    shape_instance,
)
from labelpilot.adapters.cvat.client import json_pages
from labelpilot.backends.acceptance import DEFAULT_IOU, AcceptanceLedger, Region, compare
from labelpilot.backends.geometry import rotated_corners
from labelpilot.backends.images import decode_image
from labelpilot.backends.shapes import BBox, Instance, RotatedBox
from labelpilot.trainers.acceptance_queue import queue_comparison

log = logging.getLogger(__name__)
ACCEPTANCE_JOB = "labelpilot.jobs.acceptance_cvat"
DETECTION_TTL_S = 14 * 86400
_KEY = "labelpilot:acceptance:cvat:frame:"
SHAPE, TAG = "shape", "tag"  # Region.control: CVAT shapes compare with shapes, tags with tags


def project_key(task_id: int) -> str:
    return f"cvat-task-{task_id}"


def frame_digest(image: np.ndarray) -> str:
    """Identifies a frame by its decoded pixels (the detector sees no task or frame id)."""
    digest = hashlib.sha1(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def remember_detection(
    connection: redis.Redis,
    image: np.ndarray,
    model_version: str,
    shapes: list[dict[str, Any]],
    ttl_s: int = DETECTION_TTL_S,
) -> None:
    """Keep what the detector returned for this frame (the newest call wins). Never raises:
    a detector answer must not fail because the acceptance bookkeeping did."""
    try:
        height, width = image.shape[:2]
        body = json.dumps(
            {"model_version": model_version, "width": width, "height": height, "shapes": shapes}
        )
        connection.set(_KEY + frame_digest(image), body, ex=ttl_s)
    except (redis.RedisError, TypeError, ValueError) as exc:
        log.warning("acceptance: detection not remembered: %s", exc)


def detection_for(connection: redis.Redis, image: np.ndarray) -> dict[str, Any] | None:
    raw = connection.get(_KEY + frame_digest(image))
    return json.loads(raw) if raw else None


def _instance_region(instance: Instance, width: int, height: int) -> Region:
    shape: dict[str, Any]
    if instance.mask is not None:
        shape = {"mask": instance.mask}
    elif instance.rotated is not None:
        shape = {"polygon": tuple(rotated_corners(instance.rotated))}
    elif instance.polygon:
        shape = {"polygon": instance.polygon}
    else:
        shape = {"box": instance.box}
    return Region(SHAPE, instance.class_name, width=width, height=height, **shape)


def detector_regions(shapes: Iterable[dict[str, Any]], width: int, height: int) -> list[Region]:
    """The detector's nuclio reply → Regions: rectangles (rotated too), masks by the polygon
    sent with them, polygons, tags. Skeletons are left out (not compared)."""
    out: list[Region] = []
    for shape in shapes:
        label, kind = str(shape.get("label")), str(shape.get("type"))
        points = [float(v) for v in shape.get("points") or []]
        if kind == "tag":
            out.append(Region(TAG, label))
        elif kind == "rectangle" and len(points) == 4:
            x1, y1, x2, y2 = points
            rotation = float(shape.get("rotation") or 0) % 360
            if min(rotation, 360 - rotation) < 1e-3:
                out.append(
                    Region(SHAPE, label, box=BBox(x1, y1, x2, y2), width=width, height=height)
                )
            else:
                box = RotatedBox(
                    (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, math.radians(rotation)
                )
                out.append(
                    Region(
                        SHAPE,
                        label,
                        polygon=tuple(rotated_corners(box)),
                        width=width,
                        height=height,
                    )
                )
        elif kind in ("mask", "polygon") and len(points) >= 6:
            pairs = tuple((points[i], points[i + 1]) for i in range(0, len(points) - 1, 2))
            out.append(Region(SHAPE, label, polygon=pairs, width=width, height=height))
    return out


def annotation_regions(
    shapes: Iterable[Any],
    tags: Iterable[Any],
    labels: Mapping[int, LabelInfo],
    width: int,
    height: int,
) -> list[Region]:
    """A frame's stored CVAT shapes and tags → Regions (shape types we cannot compare, and
    shapes of unknown labels, are left out)."""
    out: list[Region] = []
    for tag in tags:
        label = labels.get(int(get(tag, "label_id", -1)))
        if label is not None:
            out.append(Region(TAG, label.name))
    for shape in shapes:
        label = labels.get(int(get(shape, "label_id", -1)))
        instance = shape_instance(shape, label, width, height) if label else None
        if instance is not None and instance.keypoints is None:
            out.append(_instance_region(instance, width, height))
    return out


def measure_job(
    client: Any,
    job_id: int,
    task_id: int,
    connection: redis.Redis,
    ledger: AcceptanceLedger,
    *,
    max_pixels: int,
    iou: float = DEFAULT_IOU,
) -> dict[str, Any]:
    """Compare every frame of a completed CVAT job with labelpilot's detection of it."""
    key = project_key(task_id)
    api = client.api_client
    jobs = [j for j in json_pages(api.jobs_api.list, task_id=task_id) if int(j["id"]) == job_id]
    if not jobs:
        raise ValueError(f"CVAT has no job {job_id} in task {task_id}")
    start, stop = int(jobs[0]["start_frame"]), int(jobs[0]["stop_frame"])
    task = client.tasks.retrieve(task_id)
    labels = label_infos(json_pages(api.labels_api.list, task_id=task_id))
    annotations = task.get_annotations()
    annotations = annotations.to_dict() if hasattr(annotations, "to_dict") else annotations
    frames = by_frame(annotations, stop, only=range(start, stop + 1))
    done: dict[str, Any] = {
        "project": key,
        "job": job_id,
        "frames": 0,
        "ignored": 0,
        "versions": {},
    }
    for index in range(start, stop + 1):
        image = decode_image(
            task.get_frame(index, quality="original").read(), max_pixels=max_pixels
        )
        detection = detection_for(connection, image)
        if detection is None:
            ledger.ignore(key, "no_labelpilot_prediction")
            done["ignored"] += 1
            continue
        height, width = image.shape[:2]
        held = frames.get(index)
        comparison = compare(
            detector_regions(detection["shapes"], width, height),
            annotation_regions(
                held.shapes if held else [], held.tags if held else [], labels, width, height
            ),
            iou,
        )
        version = str(detection["model_version"])
        ledger.record(key, version, f"job-{job_id}-frame-{index}", comparison)
        done["frames"] += 1
        figures = done["versions"].setdefault(
            version, dict.fromkeys(("predicted", "kept", "added", "deleted"), 0)
        )
        for name, value in comparison.as_dict().items():
            figures[name] += value
    log.info("acceptance %s job %s: %s", key, job_id, done)
    return done


def queue_job_acceptance(
    connection: redis.Redis, job_id: int, task_id: int, *, job_func: str = ACCEPTANCE_JOB
) -> str:
    """One comparison per completion (a job completed again is compared again)."""
    return queue_comparison(
        connection,
        job_func,
        f"acceptance-cvat-job-{job_id}-{int(time.time())}",
        {"job_id": job_id, "task_id": task_id},
        description=f"acceptance of CVAT job {job_id}",
        meta={"acceptance": project_key(task_id), "phase": "queued", "cvat_job": job_id},
        timeout=1800,
    )


CompletedHook = Callable[[int, int], str]
"""Queue the comparison of a completed CVAT job: (job id, task id) → RQ job id."""


def on_job_completed(
    connection: redis.Redis, job: Any, hook: CompletedHook | None = None
) -> str | None:
    """From the webhook, for a job that became completed: queue its comparison. Never raises
    (the webhook keeps its answer; the log says what failed)."""
    try:
        if job is None or not getattr(job, "task_id", None):
            return None
        if hook is not None:
            return hook(int(job.id), int(job.task_id))
        return queue_job_acceptance(connection, int(job.id), int(job.task_id))
    except Exception:  # a webhook keeps its answer; the log says what failed
        log.exception("acceptance: CVAT job %s not queued", getattr(job, "id", None))
        return None
