"""Acceptance rate for Label Studio: on ANNOTATION_CREATED / ANNOTATION_UPDATED, compare the
submitted annotation with the prediction labelpilot made for the task.

The webhook only queues a job (LS waits at most 1 s for the answer); the job reads the
annotation and the task's predictions back through LS's API, so it always sees the latest
state, whatever order the jobs of one annotation run in.

Which prediction: the annotation's `parent_prediction` when it is labelpilot's, else the
newest labelpilot prediction of the task. A prediction is labelpilot's when every `+`-part of
its `model_version` is one labelpilot writes: a trained version of this project
(`ls-<project>-<control>-v<N>`) or a weights file's name with its 8-hex digest
(`yolo11n-1a2b3c4d`, see `backends.model_ref.model_version`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import redis

from labelpilot.adapters.label_studio.annotations import ls_rectangle
from labelpilot.adapters.label_studio.client import LabelStudioApiError, LabelStudioClient
from labelpilot.adapters.label_studio.payloads import WebhookEvent
from labelpilot.backends.acceptance import DEFAULT_IOU, AcceptanceLedger, Region, compare
from labelpilot.backends.geometry import rotated_corners
from labelpilot.backends.shapes import RotatedBox
from labelpilot.trainers.acceptance_queue import queue_comparison

log = logging.getLogger(__name__)
ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
DELETE_ACTIONS = frozenset({"ANNOTATION_DELETED", "ANNOTATIONS_DELETED"})
ACCEPTANCE_JOB = "labelpilot.jobs.acceptance_label_studio"
_LABELLED = {
    "rectanglelabels": "rectangle",
    "polygonlabels": "polygon",
    "brushlabels": "brush",
    "keypointlabels": "point",
}
_DIGEST_VERSION = re.compile(r"^[\w.\-]+-[0-9a-f]{8}$")


@dataclass(frozen=True)
class AcceptanceRequest:
    """What the job needs: which annotation of which task of which project."""

    project_id: int
    annotation_id: int
    task_id: int | None = None


AnnotationHook = Callable[[AcceptanceRequest, str], str]
"""Queue the comparison of one annotation (request, result digest) → job id."""


def project_key(project_id: int) -> str:
    return f"ls-{project_id}"


def acceptance_request(event: WebhookEvent) -> AcceptanceRequest | None:
    """The request an annotation webhook asks for; None for other events or bad ids."""
    annotation = event.annotation or {}
    pid, aid = event.project_id, annotation.get("id")
    if event.action not in ANNOTATION_ACTIONS or pid is None or not isinstance(aid, int):
        return None
    task = annotation.get("task")
    if task is None:
        task = (event.task or {}).get("id")
    return AcceptanceRequest(pid, aid, task if isinstance(task, int) else None)


def result_digest(annotation: dict[str, Any]) -> str:
    """Identifies one state of an annotation: the same result is compared once."""
    text = json.dumps(
        [annotation.get("result"), annotation.get("was_cancelled")], sort_keys=True, default=str
    )
    return hashlib.sha1(text.encode()).hexdigest()


def forget_deleted(ledger: AcceptanceLedger, event: WebhookEvent) -> int:
    """Take deleted annotations out of the totals (cheap: done inside the webhook)."""
    if event.action not in DELETE_ACTIONS or event.project_id is None:
        return 0
    gone = [a.get("id") for a in [event.annotation or {}, *(event.annotations or [])]]
    return sum(
        ledger.forget(project_key(event.project_id), aid) for aid in gone if isinstance(aid, int)
    )


def is_labelpilot_version(model_version: str | None, project_id: int) -> bool:
    """Whether labelpilot's /predict could have written this model_version for the project."""
    if not model_version:
        return False
    trained = re.compile(rf"^ls-{project_id}-[\w.\-]+-v\d+$")
    return all(
        trained.match(part) or _DIGEST_VERSION.match(part) for part in model_version.split("+")
    )


def pick_prediction(
    predictions: Iterable[dict[str, Any]], annotation: dict[str, Any], project_id: int
) -> dict[str, Any] | None:
    """The annotation's parent prediction when labelpilot made it, else labelpilot's newest
    made before the annotation was (a version trained on this very annotation later must not
    be credited with it; LS's timestamps are ISO 8601 in UTC, so they sort as text)."""
    ours = [p for p in predictions if is_labelpilot_version(p.get("model_version"), project_id)]
    parent = annotation.get("parent_prediction")
    for prediction in ours:
        if parent is not None and prediction.get("id") == parent:
            return prediction
    made = str(annotation.get("created_at") or "")
    if made:
        ours = [p for p in ours if str(p.get("created_at") or "") <= made]
    ours.sort(key=lambda p: (str(p.get("created_at") or ""), int(p.get("id") or 0)))
    return ours[-1] if ours else None


def _size(item: dict[str, Any]) -> tuple[int, int]:
    """Pixels of the image a region was drawn on; 100 x 100 (percent) when LS does not say:
    axis-aligned IoU is the same in percent and in pixels."""
    try:
        return int(item["original_width"]), int(item["original_height"])
    except (KeyError, TypeError, ValueError):
        return 100, 100


def _shape(kind: str, value: dict[str, Any], width: int, height: int) -> dict[str, Any] | None:
    if kind == "rectangle":
        shape = ls_rectangle(
            float(value["x"]),
            float(value["y"]),
            float(value["width"]),
            float(value["height"]),
            float(value.get("rotation") or 0),
            width,
            height,
        )
        if isinstance(shape, RotatedBox):
            return {"polygon": tuple(rotated_corners(shape))}
        return {"box": shape}
    if kind == "polygon":
        return {
            "polygon": tuple(
                (float(x) * width / 100, float(y) * height / 100) for x, y in value["points"]
            )
        }
    if kind == "point":
        return {"point": (float(value["x"]) * width / 100, float(value["y"]) * height / 100)}
    if kind == "brush":
        from label_studio_sdk.converter.brush import decode_rle

        rle = value.get("rle")
        if not rle:
            return None
        flat = np.asarray(decode_rle(rle))
        if flat.size != width * height * 4:
            return None
        return {"mask": flat.reshape(height, width, 4)[:, :, 3] > 0}
    return None


def regions(result: Iterable[Any], controls: frozenset[str] | None = None) -> list[Region]:
    """LS result items → Regions: labelled rectangles (rotated too), polygons, brush masks,
    keypoints, and one Region per chosen Choice. Other items (text areas, relations, video,
    unlabelled shapes) and items of controls outside `controls` are left out; a malformed
    item is skipped rather than failing the whole comparison."""
    out: list[Region] = []
    for item in result:
        if not isinstance(item, dict):
            continue
        control, kind = str(item.get("from_name") or ""), str(item.get("type") or "")
        raw = item.get("value")
        value: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if controls is not None and control not in controls:
            continue
        if kind == "choices":
            out += [Region(control, str(c)) for c in value.get("choices") or []]
            continue
        labels = value.get(kind) or []
        if kind not in _LABELLED or not labels:
            continue
        width, height = _size(item)
        try:
            shape = _shape(_LABELLED[kind], value, width, height)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("acceptance: region %s of %s skipped: %s", item.get("id"), control, exc)
            continue
        if shape is not None:
            out.append(Region(control, str(labels[0]), width=width, height=height, **shape))
    return out


def measure_annotation(
    request: AcceptanceRequest,
    api: LabelStudioClient,
    ledger: AcceptanceLedger,
    *,
    controls: frozenset[str] | None = None,
    iou: float = DEFAULT_IOU,
) -> dict[str, Any]:
    """Compare one annotation (as LS holds it now) with labelpilot's prediction and record
    it; returns what was done, for the job's result and the log."""
    key = project_key(request.project_id)
    done: dict[str, Any] = {"project": key, "annotation": request.annotation_id}
    try:
        annotation = api.get(f"/api/annotations/{request.annotation_id}")
    except LabelStudioApiError as exc:
        if exc.status != 404:
            raise
        ledger.forget(key, request.annotation_id)
        return {**done, "outcome": "deleted"}
    if annotation.get("was_cancelled"):
        ledger.forget(key, request.annotation_id)
        ledger.ignore(key, "skipped")
        log.info(
            "acceptance %s annotation %s: skipped by the annotator, ignored",
            key,
            request.annotation_id,
        )
        return {**done, "outcome": "skipped"}
    task = annotation.get("task") if annotation.get("task") is not None else request.task_id
    prediction = (
        pick_prediction(api.task_predictions(int(task)), annotation, request.project_id)
        if task is not None
        else None
    )
    if prediction is None:
        ledger.ignore(key, "no_labelpilot_prediction")
        log.info(
            "acceptance %s annotation %s: no labelpilot prediction on task %s, ignored",
            key,
            request.annotation_id,
            task,
        )
        return {**done, "outcome": "no_labelpilot_prediction"}
    comparison = compare(
        regions(prediction.get("result") or [], controls),
        regions(annotation.get("result") or [], controls),
        iou,
    )
    version = str(prediction["model_version"])
    replaced = ledger.record(key, version, request.annotation_id, comparison)
    log.info(
        "acceptance %s annotation %s vs %s prediction %s: %s%s",
        key,
        request.annotation_id,
        version,
        prediction.get("id"),
        comparison.as_dict(),
        " (replaces its earlier count)" if replaced else "",
    )
    return {
        **done,
        "outcome": "recorded",
        "model_version": version,
        "prediction": prediction.get("id"),
        "replaced": replaced,
        **comparison.as_dict(),
    }


def queue_acceptance(
    connection: redis.Redis,
    request: AcceptanceRequest,
    digest: str,
    *,
    job_func: str = ACCEPTANCE_JOB,
) -> str:
    """One job per annotation state (project, annotation, result digest)."""
    return queue_comparison(
        connection,
        job_func,
        f"acceptance-ls-{request.project_id}-{request.annotation_id}-{digest[:10]}",
        {"request": asdict(request)},
        description=f"acceptance of LS annotation {request.annotation_id}",
        meta={
            "acceptance": project_key(request.project_id),
            "phase": "queued",
            "annotation": request.annotation_id,
        },
    )


def on_annotation_event(
    connection: redis.Redis, event: WebhookEvent, hook: AnnotationHook | None = None
) -> str | None:
    """From the webhook: queue the comparison of a created/updated annotation, or take a
    deleted one out of the totals. Never raises (acceptance must not fail a webhook)."""
    try:
        if event.action in DELETE_ACTIONS:
            forget_deleted(AcceptanceLedger(connection), event)
            return None
        request = acceptance_request(event)
        if request is None:
            return None
        digest = result_digest(event.annotation or {})
        if hook is not None:
            return hook(request, digest)
        return queue_acceptance(connection, request, digest)
    except Exception:  # a webhook keeps its answer; the log says what failed
        log.exception("acceptance: %s for project %s not queued", event.action, event.project_id)
        return None
