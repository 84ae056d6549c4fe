"""One training run: dataset → train → evaluate candidate vs current → version → gate."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labelpilot.backends.bands import BandMapping
from labelpilot.backends.model_store import HOLDOUT_FILE, ModelStore, ModelVersion
from labelpilot.backends.tasks import task_spec
from labelpilot.trainers.dataset import DatasetError, build_dataset
from labelpilot.trainers.drift_reference import write_reference
from labelpilot.trainers.holdout import pack_holdout
from labelpilot.trainers.quality_screen import screen_samples
from labelpilot.trainers.retraining import RetrainingRequests, vetting_request
from labelpilot.trainers.samples import Sample, Skipped
from labelpilot.trainers.tiling import training_slicing
from labelpilot.trainers.yolo_train import evaluate_yolo, floor_metric, primary_metric, train_yolo

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
    # a version promoted with nothing comparable serving (the first one) must reach this
    # holdout mAP50 (classify: top-1 accuracy this far above chance); else an admin decides
    first_version_floor: float = 0.05
    train_every: int = 0  # start training after this many annotation changes (0: only on demand)
    # weights whose matching layers seed a first version trained from a YAML (no served
    # weights of the task yet), e.g. the project's detect model for its first pose model
    pretrained: str = ""
    # image quality (labelpilot.backends.quality.QualityThresholds; see trainers/quality_settings)
    quality_dark: float = 40.0  # mean brightness (0-255) below this: "dark"
    quality_overexposed: float = 200.0  # mean brightness above this: "overexposed" …
    quality_clipped: float = 0.3  # … or this share of pixels at 250+
    quality_blurry: float = 0.3  # blur ratio (0 sharp .. 1) at or above this: "blurry"
    quality_low_information: float = 6.0  # gray standard deviation below this: near-constant
    quality_min_side: int = 32  # "odd_size": a side shorter than this (px) …
    quality_max_aspect: float = 6.0  # … or a longer/shorter side ratio above this
    quality_bands: str = "1,3"  # band counts a source file may have ("odd_bands" otherwise)
    quality_near_duplicate: int = 6  # perceptual-hash bits (of 64) apart: "near_duplicate"
    low_quality: str = "keep"  # training: "keep" or "skip" dark/overexposed/blurry/flat images
    # band mapping for 16-bit / multi-band images (labelpilot.backends.bands.BandMapping):
    # source bands seen as R,G,B ("4,1,2"; "1": gray; "auto": 1-3) and percentile stretch
    bands: str = "auto"
    stretch: str = "2,98"
    # huge images (backends/slicing.py): slice size in px (0: off) and overlap; CVAT
    # detections run sliced and training uses tiles (LS: model_slice on the control)
    slice: int = 0
    slice_overlap: float = 0.2

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
    skipped: Sequence[Skipped] = ()  # labelled items the source left out, and why


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
        skipped = left_out(request, progress)
        samples, screened = screen_samples(request.samples, request.params, progress)
        skipped += screened  # holdout repeats (leakage) and, if set, low-quality images
        try:
            dataset = build_dataset(samples, request.task, request.class_names,
                                    work / "data", keypoint_count=request.keypoint_count,
                                    slicing=training_slicing(request.params.slice,
                                                             request.params.slice_overlap,
                                                             request.trigger))
        except DatasetError as exc:
            if not skipped:
                raise
            raise DatasetError(f"{exc} ({len(skipped)} more left out: "
                               f"{skipped[0]['sample']}: {skipped[0]['reason']}"
                               f"{', ...' if len(skipped) > 1 else ''})") from exc
        counts = {**dataset.counts, "skipped": len(skipped)}
        timings["dataset_s"] = time.time() - started
        epochs = request.params.epochs

        trained: list[int] = []  # epochs ultralytics really trained (0-based)

        def on_epoch(trainer: Any) -> None:
            metrics = {k: round(float(v), 4) for k, v in (trainer.metrics or {}).items()}
            if not trained or int(trainer.epoch) != trained[-1]:
                # ultralytics' final validation of best.pt (`final_eval`) runs this callback
                # once more with its epoch counter raised by one ("epoch 6/5"; after an early
                # stop, a plausible but untrained epoch): the best weights' metrics instead
                progress({"phase": "validating", "epochs": epochs, "metrics": metrics})
                return
            progress({"phase": "training", "epoch": trained[-1] + 1, "epochs": epochs,
                      "metrics": metrics})

        progress({"phase": "training", "epoch": 0, "epochs": epochs, "counts": counts})
        t0 = time.time()
        transfer: dict[str, Any] = ({"pretrained": request.params.pretrained}
                    if request.params.pretrained and request.base_model.endswith(".yaml") else {})
        weights = train_yolo(request.base_model, dataset.train_data, work / "train",
                             epochs=epochs, imgsz=request.params.imgsz,
                             batch=request.params.batch, patience=request.params.patience,
                             device=request.device,
                             callbacks={"on_train_epoch_end": lambda t: trained.append(
                                 int(t.epoch)), "on_fit_epoch_end": on_epoch},
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
        decision = gate(request.params, candidate_metrics, current_metrics,
                        class_count=len(dataset.class_names))
        vetting = vetting_request(store.connection, request.key, request.trigger)
        if vetting:  # a drift's retraining request: only an admin's approval promotes
            decision = {"promote": False, "reason": f"retraining request {vetting}: waiting "
                        f"for an admin to approve ({decision['reason']})", "request": vetting}
        progress({"phase": "reference"})
        t0 = time.time()
        extra = write_reference(str(weights), [s.image for s in request.samples], work,
                                task=request.task, imgsz=request.params.imgsz,
                                device=request.device)
        timings["reference_s"] = time.time() - t0
        # what an export's parity check runs on (`labelpilot models export`)
        extra = {**extra, HOLDOUT_FILE: pack_holdout(dataset, work / HOLDOUT_FILE)}
        info = {
            "task": request.task, "class_names": list(dataset.class_names),
            "keypoint_count": request.keypoint_count,
            "base_model": request.base_model,
            "parent_version": current.version if current else None,
            "compared_with": baseline,
            "metrics": {"candidate": candidate_metrics, "current": current_metrics,
                        "holdout_images": dataset.counts["holdout"]},
            "dataset": {"counts": counts, "manifest": [*dataset.manifest, *skipped]},
            "params": asdict(request.params), "trigger": request.trigger,
            "bands": str(BandMapping.parse(request.params.bands, request.params.stretch)),
            "decision": decision, "timings": {**timings, "total_s": time.time() - started},
        }
        progress({"phase": "writing"})
        version = store.write_version(request.key, weights, info, extra_files=extra)
    if vetting:
        RetrainingRequests(store.connection).attach_candidate(vetting, version.version)
    if decision["promote"]:
        store.promote(request.key, version.version, by="auto-gate")
    log.info("%s %s: candidate %s vs current %s → %s", request.key, version.version,
             candidate_metrics, current_metrics, decision["reason"])
    result = {**info, "version": version.version, "model_version": version.model_version}
    result["dataset"] = {"counts": counts}
    progress({"phase": "done", "version": version.version, "promoted": decision["promote"]})
    return result


def left_out(request: TrainRequest, progress: Progress) -> list[dict[str, Any]]:
    """The items the source left out, as manifest entries (split "skipped", with the reason),
    counted and named in the job's progress and log."""
    entries = [{"sample": s.sample_id, "split": "skipped", "reason": s.reason, **s.provenance}
               for s in request.skipped]
    if entries:
        log.warning("%s: %d labelled item(s) left out of training: %s", request.key,
                    len(entries), "; ".join(f"{e['sample']}: {e['reason']}" for e in entries))
    progress({"phase": "dataset", "samples": len(request.samples),
              **({"skipped": [e["sample"] for e in entries]} if entries else {})})
    return entries


def gate(params: TrainParams, candidate: dict[str, float] | None,
         current: dict[str, float] | None, class_count: int = 0) -> dict[str, Any]:
    """Promotion decision on the holdout's primary metric (mAP50-95, or top-1 accuracy).
    With nothing comparable serving (a first version), the candidate must clear a floor
    instead (`first_version_floor`): a model that finds nothing never starts serving.
    `class_count`: the model's classes (chance level of top-1 accuracy is 1 / class_count)."""
    if params.promotion == "manual":
        return {"promote": False, "reason": "manual promotion: waiting for an admin"}
    if candidate is None:
        return {"promote": False, "reason": "candidate could not be evaluated"}
    if current is None:
        return first_version_gate(params, candidate, class_count)
    name, value = primary_metric(candidate)
    served = current[name]
    better = value > served + params.margin
    return {"promote": better, "reason": (
        f"candidate {name} {value:.3f} vs current {served:.3f} (margin {params.margin})")}


def first_version_gate(params: TrainParams, candidate: dict[str, float],
                       class_count: int = 0) -> dict[str, Any]:
    """Promote a version with nothing comparable serving only if its holdout mAP50 (top-1
    accuracy: above chance) reaches `params.first_version_floor`."""
    name, value = floor_metric(candidate)
    chance = 1 / class_count if name.startswith("accuracy") and class_count > 0 else 0.0
    floor = chance + params.first_version_floor
    described = f"holdout {name} {value:.3f}"
    needed = f"floor {floor:.3f}" + (f" (chance {chance:.3f} + " if chance else " (") + \
        f"first_version_floor {params.first_version_floor})"
    if value < floor:
        return {"promote": False, "reason": (
            f"no comparable current model, and the {described} is below the {needed}: "
            "not served; waiting for an admin to promote it (or label more and train again)")}
    return {"promote": True, "reason": f"no comparable current model; {described} reaches "
                                       f"the {needed}"}
