"""One training run: dataset → train → evaluate candidate vs current → version → gate."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labelpilot.backends.model_store import ModelStore, ModelVersion
from labelpilot.backends.tasks import task_spec
from labelpilot.trainers.dataset import build_dataset
from labelpilot.trainers.samples import Sample
from labelpilot.trainers.yolo_train import evaluate_yolo, primary_metric, train_yolo

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainParams:
    """Per-project training settings (stored in Redis; see labelpilot.trainers.settings)."""

    epochs: int = 30
    imgsz: int = 320
    batch: int = 8
    patience: int = 50
    promotion: str = "auto"  # "auto": promote if better by `margin`; "manual": an admin vets
    margin: float = 0.0
    train_every: int = 0  # start training after this many annotation changes (0: only on demand)
    # weights whose matching layers seed a first version trained from a YAML (no served
    # weights of the task yet), e.g. the project's detect model for its first pose model
    pretrained: str = ""

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TrainParams:
        known = {f: type(getattr(cls(), f)) for f in cls.__dataclass_fields__}
        return cls(**{k: known[k](v) for k, v in values.items() if k in known})


@dataclass(frozen=True)
class TrainRequest:
    key: str  # model-store key, e.g. "ls-3-label"
    task: str  # a key of labelpilot.backends.tasks.TASKS
    class_names: tuple[str, ...]
    samples: Sequence[Sample]
    base_model: str  # weights to start from, or a .yaml
    params: TrainParams
    serving_weights: str | None = None  # what serves now when no version is promoted yet
    trigger: dict[str, Any] = field(default_factory=dict)
    keypoint_count: int = 0  # pose: keypoints per object (K of kpt_shape)
    device: str = ""  # LABELPILOT_DEVICE; empty: CUDA when present, else CPU


def scratch_model(task: str) -> str:
    return task_spec(task).scratch_yaml


def run_training(request: TrainRequest, store: ModelStore,
                 progress: Progress = lambda _: None) -> dict[str, Any]:
    """Train, evaluate and write a version; promote it if the gate allows. Returns its info."""
    timings: dict[str, float] = {}
    started = time.time()
    current: ModelVersion | None = store.current(request.key)
    baseline = str(current.weights) if current else request.serving_weights
    with tempfile.TemporaryDirectory(prefix=f"train-{request.key}-") as tmp:
        work = Path(tmp)
        progress({"phase": "dataset", "samples": len(request.samples)})
        dataset = build_dataset(request.samples, request.task, request.class_names,
                                work / "data", keypoint_count=request.keypoint_count)
        timings["dataset_s"] = time.time() - started
        epochs = request.params.epochs

        def on_epoch(trainer: Any) -> None:
            metrics = {k: round(float(v), 4) for k, v in (trainer.metrics or {}).items()}
            progress({"phase": "training", "epoch": int(trainer.epoch) + 1, "epochs": epochs,
                      "metrics": metrics})

        progress({"phase": "training", "epoch": 0, "epochs": epochs, "counts": dataset.counts})
        t0 = time.time()
        transfer: dict[str, Any] = ({"pretrained": request.params.pretrained}
                    if request.params.pretrained and request.base_model.endswith(".yaml") else {})
        weights = train_yolo(request.base_model, dataset.train_data, work / "train",
                             epochs=epochs, imgsz=request.params.imgsz,
                             batch=request.params.batch, patience=request.params.patience,
                             device=request.device, callbacks={"on_fit_epoch_end": on_epoch},
                             **transfer)
        timings["train_s"] = time.time() - t0
        progress({"phase": "evaluating"})
        t0 = time.time()
        def evaluate(path: str) -> dict[str, float] | None:
            return evaluate_yolo(path, dataset.holdout_data, imgsz=request.params.imgsz,
                                 task=request.task, class_names=dataset.class_names,
                                 split=dataset.holdout_split,
                                 keypoint_count=request.keypoint_count, device=request.device)

        candidate_metrics = evaluate(str(weights))
        current_metrics = evaluate(baseline) if baseline else None
        timings["evaluate_s"] = time.time() - t0
        decision = gate(request.params, candidate_metrics, current_metrics)
        info = {
            "task": request.task, "class_names": list(dataset.class_names),
            "keypoint_count": request.keypoint_count,
            "base_model": request.base_model,
            "parent_version": current.version if current else None,
            "compared_with": baseline,
            "metrics": {"candidate": candidate_metrics, "current": current_metrics,
                        "holdout_images": dataset.counts["holdout"]},
            "dataset": {"counts": dataset.counts, "manifest": dataset.manifest},
            "params": asdict(request.params), "trigger": request.trigger,
            "decision": decision, "timings": {**timings, "total_s": time.time() - started},
        }
        progress({"phase": "writing"})
        version = store.write_version(request.key, weights, info)
    if decision["promote"]:
        store.promote(request.key, version.version, by="auto-gate")
    log.info("%s %s: candidate %s vs current %s → %s", request.key, version.version,
             candidate_metrics, current_metrics, decision["reason"])
    result = {**info, "version": version.version, "model_version": version.model_version}
    result["dataset"] = {"counts": dataset.counts}
    progress({"phase": "done", "version": version.version, "promoted": decision["promote"]})
    return result


def gate(params: TrainParams, candidate: dict[str, float] | None,
         current: dict[str, float] | None) -> dict[str, Any]:
    """Promotion decision on the holdout's primary metric (mAP50-95, or top-1 accuracy)."""
    if params.promotion == "manual":
        return {"promote": False, "reason": "manual promotion: waiting for an admin"}
    if candidate is None:
        return {"promote": False, "reason": "candidate could not be evaluated"}
    if current is None:
        return {"promote": True, "reason": "no comparable current model"}
    name, value = primary_metric(candidate)
    served = current[name]
    better = value > served + params.margin
    return {"promote": better, "reason": (
        f"candidate {name} {value:.3f} vs current {served:.3f} (margin {params.margin})")}
