"""Every frame of a CVAT task predicted as a bulk run (see `trainers.bulk_run`): frames fetched
through cvat-sdk, predicted in batches by the task's served detector (its own trained version,
else its project's, else the default: the model `labelpilot annotate` and the facade use),
turned into CVAT shapes by the facade's own conversion (`cvat_shapes`, `sdk_requests`) and
added with one `PATCH /api/tasks/{id}/annotations?action=create` per chunk.

CVAT records no model version on a shape: a frame that holds machine-made shapes
(`source` auto or semi-auto) is left out when listed, and every chunk asks again (one request)
under a lock per task right before it is written, so a frame never gets machine-made shapes
twice (a chunk taken over from a stopped shard, or a frame annotated meanwhile).
`only_missing`: leave out frames that hold any shape at all.

The task's slicing setting (`labelpilot settings cvat-task-5 --slice 640`, read by
`trainers.slice_settings` under the same key as the facade's detector) runs every frame
sliced (`backends.slicing.sliced_predict`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from labelpilot.adapters.cvat.annotations import text_value
from labelpilot.adapters.cvat.client import json_body, json_pages
from labelpilot.adapters.cvat.shapes import cvat_shapes, sdk_requests
from labelpilot.adapters.cvat.spec import LabelSpec
from labelpilot.adapters.cvat.training import store_key
from labelpilot.backends.images import ImageError, decode_image
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore, serving_weights
from labelpilot.backends.slicing import SliceSpec, sliced_predict
from labelpilot.backends.yolo import YoloModel
from labelpilot.trainers.bulk_run import ChunkOutcome, write_lock

log = logging.getLogger(__name__)
MACHINE = ("auto", "semi-auto")


class CvatBulkError(ValueError):
    """What to fix before the task can be predicted."""


def run_key(task_id: int) -> str:
    return f"predict-cvat-task-{task_id}"


def task_labels(client: Any, task_id: int) -> list[LabelSpec]:
    """The task's labels as the facade's label specs (matched to model classes by name)."""
    labels = json_pages(client.api_client.labels_api.list, task_id=task_id)
    kinds = {"rectangle", "mask", "polygon", "skeleton", "tag"}
    return [LabelSpec(int(x["id"]), str(x["name"]),
                      str(x.get("type")) if x.get("type") in kinds else "rectangle")
            for x in labels]


def resolve_model(client: Any, task_id: int, store: ModelStore, locator: ModelLocator,
                  default_model: str, wanted: str | None) -> tuple[str, str, str]:
    """(weights, model_version, settings key) of the task's served detector, or of the
    stored version `wanted`; CvatBulkError naming the servable versions for any other. The
    settings key is the one whose slicing applies, as in the facade's catalog: the store key
    of a trained version (cvat-task-5, cvat-project-2), else the task's."""
    _, response = client.api_client.tasks_api.retrieve(task_id, _parse_response=False)
    task = json_body(response)
    keys = [store_key("task", task_id)]
    if task.get("project_id"):
        keys.append(store_key("project", int(task["project_id"])))
    weights, version = serving_weights(store, keys, locator, default_model)
    key = next((k for k in keys if store.current(k) is not None), keys[0])
    if wanted in (None, version):
        return weights, version, key
    servable = [version]
    for key in keys:
        for stored in store.versions(key):
            servable.append(stored.model_version)
            if stored.model_version == wanted:
                return str(stored.weights), wanted, key
    raise CvatBulkError(f"model version '{wanted}' is not servable for CVAT task {task_id}; "
                        f"servable: {', '.join(dict.fromkeys(servable))}")


def _held_frames(client: Any, task_id: int, only_missing: bool) -> set[int]:
    """Frames that hold machine-made shapes (any shapes with `only_missing`)."""
    _, response = client.api_client.tasks_api.retrieve_annotations(task_id,
                                                                   _parse_response=False)
    body = json_body(response)
    return {int(s["frame"]) for s in body.get("shapes") or []
            if only_missing or text_value(s.get("source", "")) in MACHINE}


def list_frames(client: Any, task_id: int, only_missing: bool
                ) -> Iterator[tuple[dict[str, Any], str | None]]:
    _, response = client.api_client.tasks_api.retrieve_data_meta(task_id,
                                                                 _parse_response=False)
    meta = json_body(response)
    deleted = set(meta.get("deleted_frames") or [])
    held = _held_frames(client, task_id, only_missing)
    for index in range(int(meta.get("size") or 0)):
        if index in deleted:
            continue
        yield {"id": index}, ("holds shapes" if index in held else None)


class CvatChunks:
    """Predicts a chunk of frames and adds their shapes to the task (a `ChunkHandler`)."""

    def __init__(self, client: Any, task_id: int, model: YoloModel, labels: list[LabelSpec],
                 threshold: float, connection: redis.Redis, max_pixels: int,
                 slicing: SliceSpec | None = None):
        self.slicing = slicing
        self.client = client
        self.task_id = task_id
        self.model = model
        self.labels = labels
        self.threshold = threshold
        self.connection = connection
        self.max_pixels = max_pixels

    def _frame(self, index: int) -> Any:
        _, response = self.client.api_client.tasks_api.retrieve_data(
            self.task_id, type="frame", number=index, quality="original",
            _parse_response=False)
        return decode_image(response.data, max_pixels=self.max_pixels)

    def predict(self, items: Sequence[dict[str, Any]]
                ) -> tuple[dict[int, list[Any]], list[dict[str, Any]]]:
        """The chunk's shapes by frame, and the frames that could not be read."""
        from cvat_sdk import models

        frames: list[int] = []
        images = []
        failed = []
        for item in items:
            try:
                images.append(self._frame(int(item["id"])))
                frames.append(int(item["id"]))
            except ImageError as exc:
                failed.append({"item": int(item["id"]), "reason": f"frame {item['id']}: {exc}"})
        if self.slicing is not None:  # as the facade's detector serves the task
            predictions = [sliced_predict(self.model, image, self.slicing, conf=self.threshold)
                           for image in images]
        else:
            predictions = self.model.predict(images, conf=self.threshold) if images else []
        shapes: dict[int, list[Any]] = {}
        for frame, prediction in zip(frames, predictions, strict=True):
            requests = sdk_requests(cvat_shapes(prediction, self.labels, self.threshold))
            for request in requests:
                request.frame = frame
                request.source = "auto"  # how this module knows its shapes again
            shapes[frame] = [r for r in requests if isinstance(r, models.LabeledShapeRequest)]
        return shapes, failed

    def write(self, predicted: tuple[dict[int, list[Any]], list[dict[str, Any]]]
              ) -> ChunkOutcome:
        """Add the shapes of the frames that hold no machine-made shapes yet (asked of CVAT
        under the task's write lock right before writing). `written`: frames that got shapes."""
        from cvat_sdk import models

        shapes, failed = predicted
        with write_lock(self.connection, f"labelpilot:bulk:write:cvat-task-{self.task_id}"):
            held = _held_frames(self.client, self.task_id, only_missing=False) & set(shapes)
            fresh = {frame: found for frame, found in shapes.items()
                     if frame not in held and found}
            body = [s for found in fresh.values() for s in found]
            if body:
                self.client.api_client.tasks_api.partial_update_annotations(
                    "create", self.task_id,
                    patched_labeled_data_request=models.PatchedLabeledDataRequest(
                        shapes=body, tags=[], tracks=[]))
        return ChunkOutcome(written=len(fresh), present=len(held), failed=failed)
