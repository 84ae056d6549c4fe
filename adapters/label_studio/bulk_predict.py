"""Whole Label Studio projects predicted as a bulk run (see `trainers.bulk_run`).

The tasks are listed page by page (`LabelStudioClient.iter_tasks`), predicted through the same
`Predictor.predict` and serving plan as `/predict`, and written with LS's bulk endpoint
``POST /api/projects/{id}/import/predictions`` (one request per chunk: LS checks the task ids,
then creates them all in one `bulk_create`). The model is pinned when the run starts: every
shard predicts with the same weights and writes the same `model_version` that /setup reports,
even when a new version is promoted during the run.

LS must never hold two predictions of one model version for a task: a task that holds the
run's version already is left out when listed. Every write takes a lock per project and
version; inside it, right before the write, every chunk asks LS (one request) which of its
tasks hold the version now and leaves those out: the chunk may have been written before
(taken over from a stopped shard, or lost by a slow one), and LS stores the prediction of a
task that a user opens meanwhile (its /predict call) under the same version.

`only_missing`: leave out every task that holds any prediction (of any version), not only
those that hold the run's version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from labelpilot.adapters.label_studio.client import LabelStudioApiError, LabelStudioClient
from labelpilot.adapters.label_studio.config import (
    ConfigError,
    ControlDefaults,
    ServingPlan,
    parse_label_config,
    store_key,
)
from labelpilot.adapters.label_studio.image_source import ImageSource
from labelpilot.adapters.label_studio.payloads import Task
from labelpilot.adapters.label_studio.predictor import ModelChoice, Predictor
from labelpilot.adapters.label_studio.sam_config import sam_setups
from labelpilot.backends.model_store import ModelStore
from labelpilot.trainers.bulk_run import ChunkOutcome, write_lock

log = logging.getLogger(__name__)
WRITE_TIMEOUT_S = 300  # one bulk write to LS


class BulkPredictError(ValueError):
    """What to fix before a project can be bulk-predicted."""


def run_key(project_id: int) -> str:
    """The queue key of a project's bulk predictions (`labelpilot jobs --key predict-ls-3`)."""
    return f"predict-ls-{project_id}"


def serving_plan(label_config: str, defaults: ControlDefaults) -> ServingPlan:
    """The project's serving plan, as /predict builds it (interactive SAM projects have
    nothing to predict in bulk)."""
    if sam_setups(label_config or ""):
        raise BulkPredictError("the project's label config is set up for interactive SAM "
                               "(clicks): there is nothing to predict in bulk")
    try:
        plan = parse_label_config(label_config or "", defaults)
    except ConfigError as exc:
        raise BulkPredictError(str(exc)) from exc
    if not plan.controls:
        raise BulkPredictError("the project's label config has no control labelpilot predicts")
    return plan


@dataclass(frozen=True)
class PinnedModel:
    """One control's weights for the whole run (JSON in the run's config)."""

    weights: str
    version: str
    key: str | None = None

    def choice(self) -> ModelChoice:
        return ModelChoice(self.weights, self.version, key=self.key)


def resolve_models(predictor: Predictor, store: ModelStore, plan: ServingPlan,
                   project_id: int, wanted: str | None) -> tuple[str, dict[str, PinnedModel]]:
    """The run's model_version and its weights per control: the version /setup reports now,
    or `wanted` — that one, or a stored version of the project's (single) trained model.
    BulkPredictError, naming the servable versions, for any other."""
    choices = predictor.choices(plan, project_id)
    current = Predictor.version_of(choices)
    missing = sorted({c.missing for c in choices.values() if c.weights is None})
    servable: list[str] = [] if missing else [current]
    if not missing and wanted in (None, current):
        return current, {c.name: PinnedModel(str(ch.weights), ch.version, ch.key)
                         for c, ch in choices.items()}
    keys = [store_key(project_id, c) for c in plan.controls]
    if len(plan.controls) == 1 and keys[0]:
        for stored in store.versions(keys[0]):
            if stored.model_version not in servable:
                servable.append(stored.model_version)
            if stored.model_version == wanted:
                return wanted, {plan.controls[0].name: PinnedModel(
                    str(stored.weights), stored.model_version, keys[0])}
    if wanted is None:
        raise BulkPredictError(f"no model can serve project {project_id}: {'; '.join(missing)}")
    raise BulkPredictError(
        f"model version '{wanted}' is not servable for project {project_id}; servable: "
        f"{', '.join(servable) or 'none'} (the current one is what /setup reports)")


def pinned_choices(plan: ServingPlan, models: Mapping[str, Mapping[str, Any]]
                   ) -> dict[Any, ModelChoice]:
    return {c: PinnedModel(**models[c.name]).choice() for c in plan.controls}


def run_config(project_id: int, label_config: str, version: str,
               models: Mapping[str, PinnedModel], only_missing: bool) -> dict[str, Any]:
    return {"project": project_id, "label_config": label_config, "version": version,
            "models": {name: asdict(m) for name, m in models.items()},
            "only_missing": only_missing}


def list_tasks(api: LabelStudioClient, project_id: int, version: str, only_missing: bool,
               page_size: int = 500) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Every task, page by page, with why it is left out (None: predict it)."""
    for task in api.iter_tasks(project_id, page_size=page_size):
        held = task.get("predictions") or []
        item = {"id": int(task["id"]), "data": task.get("data") or {}}
        if any(p.get("model_version") == version for p in held):
            yield {"id": item["id"]}, "holds this model version"
        elif only_missing and held:
            yield {"id": item["id"]}, "holds predictions"
        else:
            yield item, None


def versions_held(api: LabelStudioClient, project_id: int, task_ids: Sequence[int],
                  version: str) -> set[int]:
    """Which of `task_ids` hold a prediction of `version` now: one Data Manager call asking
    for all of them on one page, then further pages while LS returned fewer (it caps its page
    size). `TasksGone` when LS, through its last page, did not return some of them (deleted
    meanwhile), never a guess."""
    wanted = {int(t) for t in task_ids}
    if not wanted:
        return set()
    query = json.dumps({"selectedItems": {"all": False, "included": sorted(wanted)}})
    seen: set[int] = set()
    held: set[int] = set()
    page = 1
    while True:
        try:
            body = api.get("/api/tasks", {"project": project_id, "fields": "all",
                                          "query": query, "page_size": len(wanted),
                                          "page": page})
        except LabelStudioApiError as exc:
            if page > 1 and exc.status == 404:  # past the last page: the tasks missing below
                break
            raise
        tasks = body["tasks"] if isinstance(body, dict) else body
        for task in tasks:
            tid = int(task["id"])
            seen.add(tid)
            if any(p.get("model_version") == version for p in task.get("predictions") or []):
                held.add(tid)
        total = body.get("total") if isinstance(body, dict) else None
        if not tasks or wanted <= seen or (total is not None and len(seen) >= int(total)):
            break
        page += 1
    missing = wanted - seen
    if missing:
        raise TasksGone(missing)
    return held & wanted


class TasksGone(LookupError):
    """Tasks of a chunk that Label Studio no longer lists (deleted during the run)."""

    def __init__(self, task_ids: set[int]):
        super().__init__(f"tasks {sorted(task_ids)[:10]} are no longer in Label Studio")
        self.task_ids = task_ids


class LabelStudioChunks:
    """Predicts a chunk of tasks and writes its predictions (a `ChunkHandler`)."""

    def __init__(self, predictor: Predictor, plan: ServingPlan,
                 choices: dict[Any, ModelChoice], source: ImageSource, project_id: int,
                 version: str, connection: redis.Redis):
        self.predictor = predictor
        self.plan = plan
        self.choices = choices
        self.source = source
        self.project_id = project_id
        self.version = version
        self.connection = connection

    def predict(self, items: Sequence[dict[str, Any]]
                ) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
        """The chunk's predictions by task id (as /predict returns them) and its failures."""
        tasks = [Task(id=int(i["id"]), data=i.get("data") or {}) for i in items]
        results = self.predictor.predict(tasks, self.plan, self.source, self.project_id,
                                         self.choices)
        failed = [{"item": t.id, "reason": str(r["error"])}
                  for t, r in zip(tasks, results, strict=True) if "error" in r]
        ready = {int(t.id or 0): r for t, r in zip(tasks, results, strict=True) if "result" in r}
        return ready, failed

    def write(self, predicted: tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]
              ) -> ChunkOutcome:
        """One bulk write of the tasks that do not hold the version yet, asked of LS under
        the write lock right before writing."""
        ready, failed = predicted
        api = self.source.api
        with write_lock(self.connection,
                        f"labelpilot:bulk:write:ls-{self.project_id}:{self.version}"):
            try:
                present = versions_held(api, self.project_id, list(ready), self.version)
            except TasksGone as gone:  # deleted during the run: LS would refuse the whole write
                failed = [*failed, *({"item": tid, "reason": "the task was deleted from Label "
                                      "Studio during the run"} for tid in sorted(gone.task_ids))]
                ready = {tid: r for tid, r in ready.items() if tid not in gone.task_ids}
                present = versions_held(api, self.project_id, list(ready), self.version)
            body = [{"task": tid, "result": r["result"], "score": r.get("score"),
                     "model_version": self.version}
                    for tid, r in ready.items() if tid not in present]
            if body:
                api.post(f"/api/projects/{self.project_id}/import/predictions", body,
                         timeout=WRITE_TIMEOUT_S)
        return ChunkOutcome(written=len(body), present=len(present), failed=failed)
