"""The label-error job, whatever platform the labels come from: pull the current labels from a
`LabelSource`, train k fold models from the served weights inside the worker, score every
annotation against the out-of-fold predictions (`labelpilot.trainers.label_errors`) and hand
the ranked report to a `ReviewSink`, which marks the likely mistakes where people review."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis

from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelStore
from labelpilot.backends.offline import import_ultralytics
from labelpilot.trainers.job import default_weights, running_job
from labelpilot.trainers.label_errors import Finding, LabelErrorReport, find_label_errors
from labelpilot.trainers.samples import Sample
from labelpilot.trainers.settings import load_params
from labelpilot.trainers.source import LabelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorParams:
    """How the check runs: `folds` models of `epochs` each, fine-tuned from the served weights
    (together about one training run of the same epochs), and the score from which a task is
    flagged for review."""

    folds: int = 2
    epochs: int = 5
    threshold: float = 0.5

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ErrorParams:
        params = cls(**{k: type(getattr(cls(), k))(v) for k, v in values.items()
                        if k in cls.__dataclass_fields__ and v is not None})
        if params.folds < 2:
            raise ValueError(f"folds must be at least 2 (got {params.folds})")
        if params.epochs < 1:
            raise ValueError(f"epochs must be at least 1 (got {params.epochs})")
        if not 0.0 < params.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1] (got {params.threshold})")
        return params


class ReviewSink(Protocol):
    """Where the findings go (LS: task fields and a Data Manager tab; CVAT: issues)."""

    def publish(self, samples: Sequence[Sample], report: LabelErrorReport,
                threshold: float) -> dict[str, Any]:
        """Mark the samples scoring at least `threshold`; returns what was marked."""
        ...


MAX_REASONS = 3  # findings spelled out per image (its score counts them all)


def describe_finding(finding: Finding, sample: Sample) -> str:
    """One finding in a reviewer's words, e.g. 'missing Square (model 0.91) at x 30-80,
    y 40-90 px'."""
    e = finding.evidence
    where = (f"x {e.predicted_box.x1:.0f}-{e.predicted_box.x2:.0f}, "
             f"y {e.predicted_box.y1:.0f}-{e.predicted_box.y2:.0f} px")
    if finding.kind == "missing":
        return f"missing {e.predicted_class} (model {e.predicted_score:.2f}) at {where}"
    labelled = (sample.instances[finding.instance_index].class_name
                if finding.instance_index is not None else "?")
    if finding.kind == "wrong_class":
        return (f"{labelled} looks like {e.predicted_class} (model {e.predicted_score:.2f}) "
                f"at {where}")
    return (f"{labelled} box off: IoU {e.iou:.2f} with the model's box at {where}")


def reason(findings: Sequence[Finding], sample: Sample) -> str:
    text = "; ".join(describe_finding(f, sample) for f in findings[:MAX_REASONS])
    if len(findings) > MAX_REASONS:
        text += f"; and {len(findings) - MAX_REASONS} more"
    return text


def trained_imgsz(weights: str) -> int | None:
    """The image size `weights` were trained at, when its checkpoint says (ultralytics keeps
    it with the weights); None for a YAML or a checkpoint without it."""
    if not weights.endswith(".pt"):
        return None
    import_ultralytics()
    from ultralytics import YOLO

    size = YOLO(weights).overrides.get("imgsz")
    return int(size) if isinstance(size, int | float) and size > 0 else None


def errors_key(source_key: str) -> str:
    """Queue key of a source's label-error job (one at a time, apart from its training)."""
    return f"errors-{source_key}"


def run_label_error_job(source: LabelSource, sink: ReviewSink, connection: redis.Redis,
                        store: ModelStore, params: ErrorParams, *, locator: ModelLocator,
                        device: str = "") -> dict[str, Any]:
    """One label-error check; progress (phase, fold, epoch) goes into the RQ job's meta."""
    key = errors_key(source.key)
    with running_job(connection, key) as progress, tempfile.TemporaryDirectory(
            prefix=f"{key}-") as tmp:
        (Path(tmp) / "samples").mkdir()
        pulled = source.write_samples(Path(tmp) / "samples", progress)
        spec = source.describe(pulled.samples)
        current = store.current(spec.model_key)
        start = str(current.weights) if current else default_weights(spec, locator)[0]
        # fold models fine-tune at the size the served weights learnt at (a project's
        # versions: its imgsz setting; default weights: what their checkpoint says)
        imgsz = trained_imgsz(start) or load_params(connection, source.key).imgsz
        progress({"phase": "checking", "samples": len(pulled.samples), "folds": params.folds,
                  "model": current.model_version if current else start})
        report = find_label_errors(pulled.samples, task=spec.task,
                                   class_names=spec.class_names, work_dir=Path(tmp) / "folds",
                                   start_model=start, folds=params.folds, epochs=params.epochs,
                                   imgsz=imgsz, device=device, progress=progress)
        progress({"phase": "marking", "flagged": len(report.flagged(params.threshold))})
        published = sink.publish(pulled.samples, report, params.threshold)
        result = {"key": key, "checked": len(report.samples),
                  "flagged": len(report.flagged(params.threshold)),
                  "skipped": [s.sample_id for s in pulled.skipped],
                  "timings": report.timings, **published}
        progress({"phase": "done", "flagged": result["flagged"]})
        return result
