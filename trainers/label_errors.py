"""Likely annotation mistakes, found by comparing each image's labels with out-of-fold predictions.

The samples are split into k folds (fixed by each sample's id); for every fold a model is
fine-tuned from the served weights on the other folds and predicts the held-out fold, so no
image is judged by a model that learned its labels. `score_sample` then compares annotations
with predictions (numpy IoU) and gives three kinds of finding, each scored in [0, 1]:

- ``missing``: a confident prediction that no annotation accounts for (an unlabelled object);
- ``wrong_class``: a prediction overlapping an annotation well (IoU ≥ `match_iou`) with another
  class, confident while the annotated class is not;
- ``bad_location``: the annotation's best same-class prediction overlaps it only partly; higher
  when the model is confident and the IoU lower (full score at `poor_iou`, none at `good_iou`).

An image's score is its highest finding score. Platform-neutral: the adapters turn findings
into Label Studio fields or CVAT issues. Only box detection is supported.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from labelpilot.backends.images import decode_image
from labelpilot.backends.shapes import BBox, Instance, Prediction
from labelpilot.trainers.pipeline import Progress
from labelpilot.trainers.samples import Sample
from labelpilot.trainers.yolo_train import train_yolo

KINDS = ("missing", "wrong_class", "bad_location")
SUPPORTED_TASKS = ("detect",)
# Fine-tuning served weights for a few epochs: ultralytics' defaults (warm-up with a bias
# learning rate of 0.1, "auto" optimizer) wreck a trained model in a short run.
FINE_TUNE: Mapping[str, Any] = MappingProxyType(
    {"warmup_epochs": 0, "optimizer": "AdamW", "lr0": 0.0005})


@dataclass(frozen=True)
class ScoreParams:
    """Thresholds of the three scores (IoU between a predicted and an annotated box)."""

    match_iou: float = 0.5  # a prediction this close to an annotation is about the same object
    poor_iou: float = 0.5  # bad_location: a same-class IoU at or below this is fully "bad" …
    good_iou: float = 0.85  # … and at or above this not bad at all
    min_iou: float = 0.1  # below this a prediction is about another object than the annotation
    min_score: float = 0.05  # findings scoring less are dropped


@dataclass(frozen=True)
class Evidence:
    """The prediction behind a finding and its IoU with the annotated box (for ``missing``:
    the highest IoU with any annotation)."""

    predicted_class: str
    predicted_score: float
    predicted_box: BBox
    iou: float


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    score: float  # in [0, 1]; higher: more likely a mistake
    instance_index: int | None  # index into the sample's annotated instances; None: missing
    evidence: Evidence


@dataclass(frozen=True)
class SampleFindings:
    sample_id: str
    score: float  # image level: the highest finding score (0 without findings)
    findings: tuple[Finding, ...]  # highest score first


@dataclass(frozen=True)
class LabelErrorReport:
    samples: tuple[SampleFindings, ...]  # every sample, highest image score first
    folds: int
    timings: dict[str, float] = field(default_factory=dict)

    def flagged(self, threshold: float = 0.5) -> list[SampleFindings]:
        """The samples whose image score reaches `threshold`, highest first."""
        return [s for s in self.samples if s.score >= threshold]


class LabelErrorInputError(ValueError):
    """The samples cannot be checked this way; the message says why."""


# --------------------------------------------------------------------------- scores


def _boxes(instances: Sequence[Instance]) -> np.ndarray:
    return np.array([[i.box.x1, i.box.y1, i.box.x2, i.box.y2] if i.box else [0, 0, 0, 0]
                     for i in instances], dtype=np.float64).reshape(-1, 4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N×4 xyxy) with every box in `b` (M×4): N×M."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def score_sample(annotated: Sequence[Instance], predicted: Sequence[Instance],
                 params: ScoreParams = ScoreParams()) -> list[Finding]:
    """Findings for one image, highest score first. Instances without a box are ignored
    (their indices still count in `Finding.instance_index`)."""
    ann_idx = [i for i, inst in enumerate(annotated) if inst.box is not None]
    preds = [p for p in predicted if p.box is not None]
    if not preds:
        return []
    anns = [annotated[i] for i in ann_idx]
    iou = iou_matrix(_boxes(anns), _boxes(preds))  # annotations × predictions
    pred_scores = np.array([p.score for p in preds])
    claimed = np.zeros(len(preds), dtype=bool)
    findings: list[Finding] = []
    for row, (index, ann) in enumerate(zip(ann_idx, anns, strict=True)):
        same = np.array([p.class_name == ann.class_name for p in preds])
        overlapping = iou[row] >= params.match_iou
        claimed |= overlapping
        # wrong class: the most confident other-class prediction on this object
        same_conf = float(pred_scores[overlapping & same].max(initial=0.0))
        others = np.flatnonzero(overlapping & ~same)
        if others.size:
            j = int(others[np.argmax(pred_scores[others])])
            score = float(pred_scores[j]) * (1.0 - same_conf)
            findings.append(_finding("wrong_class", score, index, preds[j], iou[row, j]))
        # bad location: the best-overlapping same-class prediction
        near = np.flatnonzero(same & (iou[row] >= params.min_iou))
        if near.size:
            j = int(near[np.argmax(iou[row, near] + 1e-6 * pred_scores[near])])
            claimed[j] = True
            span = params.good_iou - params.poor_iou
            badness = float(np.clip((params.good_iou - iou[row, j]) / span, 0.0, 1.0))
            findings.append(_finding("bad_location", float(pred_scores[j]) * badness, index,
                                     preds[j], iou[row, j]))
    # missing: predictions no annotation accounts for (less, the more they overlap one)
    best_any = iou.max(axis=0, initial=0.0)
    for j in np.flatnonzero(~claimed):
        score = float(pred_scores[j]) * (1.0 - float(best_any[j]))
        findings.append(_finding("missing", score, None, preds[int(j)], best_any[j]))
    kept = [f for f in findings if f.score >= params.min_score]
    return sorted(kept, key=lambda f: (-f.score, KINDS.index(f.kind),
                                        -1 if f.instance_index is None else f.instance_index))


def _finding(kind: str, score: float, index: int | None, pred: Instance,
             iou: float) -> Finding:
    assert pred.box is not None
    evidence = Evidence(pred.class_name, round(float(pred.score), 4), pred.box,
                        round(float(iou), 4))
    return Finding(kind, round(min(max(score, 0.0), 1.0), 4), index, evidence)


def image_score(findings: Sequence[Finding]) -> float:
    """An image's score: its highest finding score, 0 when it has none."""
    return max((f.score for f in findings), default=0.0)


# --------------------------------------------------------------------------- out-of-fold


def _hash(sample_id: str) -> str:
    return hashlib.sha1(f"fold:{sample_id}".encode()).hexdigest()


def assign_folds(samples: Sequence[Sample], folds: int) -> list[list[Sample]]:
    """Each sample in exactly one fold, decided by the sample ids alone (not their order):
    dealt in turn in the order of a hash of the id, so fold sizes differ by one at most.
    Samples of one group (the frames of one video: near-copies) share a fold."""
    buckets: list[list[Sample]] = [[] for _ in range(folds)]
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group or s.sample_id, []).append(s)
    for n, key in enumerate(sorted(groups, key=lambda k: (_hash(k), k))):
        smallest = min(range(folds), key=lambda f: (len(buckets[f]), (f - n) % folds)) \
            if len(groups) < len(samples) else n % folds
        buckets[smallest].extend(sorted(groups[key], key=lambda s: s.sample_id))
    return buckets


def check_inputs(samples: Sequence[Sample], task: str, class_names: Sequence[str],
                 folds: int) -> None:
    if task not in SUPPORTED_TASKS:
        raise LabelErrorInputError(
            f"label-error detection supports {', '.join(SUPPORTED_TASKS)} models, not {task}")
    if folds < 2:
        raise LabelErrorInputError(f"need at least 2 folds, got {folds}")
    if not class_names:
        raise LabelErrorInputError("no class names: nothing to check labels against")
    if len(samples) < 2 * folds:
        raise LabelErrorInputError(
            f"{len(samples)} labelled images are too few for {folds} folds "
            f"(at least {2 * folds}): label more tasks first")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise LabelErrorInputError("sample ids must be unique")
    known = set(class_names)
    if not any(i.class_name in known and i.box is not None for s in samples
               for i in s.instances):
        raise LabelErrorInputError("no annotated boxes of a known class: nothing to learn from")


def _label_lines(sample: Sample, index: dict[str, int]) -> list[str]:
    lines = []
    for inst in sample.instances:
        b = inst.box
        if b is None or inst.class_name not in index:
            continue
        w, h = sample.width, sample.height
        lines.append(f"{index[inst.class_name]} {(b.x1 + b.x2) / 2 / w:.6f} "
                     f"{(b.y1 + b.y2) / 2 / h:.6f} {(b.x2 - b.x1) / w:.6f} "
                     f"{(b.y2 - b.y1) / h:.6f}")
    return lines


def write_fold_dataset(train: Sequence[Sample], class_names: Sequence[str], root: Path,
                       val_images: int = 8) -> Path:
    """A YOLO detect dataset of `train` (every image trains; images without boxes are
    negatives); ultralytics' val set is the first `val_images` of them (it only picks
    best.pt). Returns the data yaml."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    index = {n: i for i, n in enumerate(class_names)}
    paths = []
    for n, sample in enumerate(train):
        target = root / "images" / f"{n:06d}{sample.image.suffix or '.png'}"
        shutil.copyfile(sample.image, target)
        (root / "labels" / f"{n:06d}.txt").write_text(
            "\n".join(_label_lines(sample, index)) + "\n")
        paths.append(str(target.resolve()))
    (root / "train.txt").write_text("\n".join(paths) + "\n")
    (root / "val.txt").write_text("\n".join(paths[:val_images]) + "\n")
    names = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(class_names))
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: train.txt\nval: val.txt\nnames:\n{names}\n")
    return data


def out_of_fold_predictions(
    samples: Sequence[Sample], *, folds: int, task: str, class_names: Sequence[str],
    work_dir: Path, epochs: int, imgsz: int, start_model: str, seed: int = 0, batch: int = 8,
    conf: float = 0.1, device: str = "", progress: Progress | None = None,
    train_args: Mapping[str, Any] = FINE_TUNE,
) -> dict[str, Prediction]:
    """For every sample, the prediction of a model that never trained on it: one model per
    fold, fine-tuned from `start_model` on the other folds for `epochs` (ultralytics
    settings `train_args`)."""
    from labelpilot.backends.yolo import YoloModel

    check_inputs(samples, task, class_names, folds)
    if start_model.endswith((".yaml", ".yml")):
        raise LabelErrorInputError(
            f"label-error detection fine-tunes trained weights, not {start_model}: "
            "train a first version (or serve pretrained weights) first")
    report = progress or (lambda _: None)
    buckets = assign_folds(samples, folds)
    out: dict[str, Prediction] = {}
    for k, held_out in enumerate(buckets):
        train = [s for i, b in enumerate(buckets) if i != k for s in b]
        fold_dir = work_dir / f"fold-{k}"
        data = write_fold_dataset(train, class_names, fold_dir / "data")
        (fold_dir / "split.json").write_text(json.dumps(  # which model judged which image
            {"train": [s.sample_id for s in train],
             "predict": [s.sample_id for s in held_out]}) + "\n")
        report({"phase": "training", "fold": k + 1, "folds": folds, "epoch": 0,
                "epochs": epochs, "train_images": len(train)})

        def on_epoch(trainer: Any, k: int = k) -> None:
            report({"phase": "training", "fold": k + 1, "folds": folds,
                    "epoch": min(int(trainer.epoch) + 1, epochs), "epochs": epochs})

        weights = train_yolo(start_model, data, fold_dir / "train", epochs=epochs, imgsz=imgsz,
                             batch=batch, seed=seed, device=device, val=False,
                             callbacks={"on_train_epoch_end": on_epoch}, **train_args)
        report({"phase": "predicting", "fold": k + 1, "folds": folds,
                "images": len(held_out)})
        model = YoloModel(str(weights), device=device, task=task)
        for start in range(0, len(held_out), 32):
            chunk = held_out[start:start + 32]
            images = [decode_image(s.image.read_bytes()) for s in chunk]
            for s, pred in zip(chunk, model.predict(images, conf=conf, imgsz=imgsz),
                               strict=True):
                out[s.sample_id] = pred
        shutil.rmtree(fold_dir / "data", ignore_errors=True)
    return out


def find_label_errors(
    samples: Sequence[Sample], *, task: str, class_names: Sequence[str], work_dir: Path,
    start_model: str, folds: int = 2, epochs: int = 5, imgsz: int = 320, seed: int = 0,
    batch: int = 8, conf: float = 0.1, device: str = "", params: ScoreParams = ScoreParams(),
    progress: Progress | None = None,
) -> LabelErrorReport:
    """Out-of-fold predictions for every sample, scored against its annotations; every
    sample in the report, most likely wrong first (ties by sample id)."""
    started = time.monotonic()
    predictions = out_of_fold_predictions(
        samples, folds=folds, task=task, class_names=class_names, work_dir=work_dir,
        epochs=epochs, imgsz=imgsz, start_model=start_model, seed=seed, batch=batch,
        conf=conf, device=device, progress=progress)
    trained = time.monotonic()
    ranked = []
    for s in samples:
        findings = tuple(score_sample(s.instances, predictions[s.sample_id].instances, params))
        ranked.append(SampleFindings(s.sample_id, image_score(findings), findings))
    ranked.sort(key=lambda r: (-r.score, r.sample_id))
    timings = {"folds_s": round(trained - started, 2),
               "scoring_s": round(time.monotonic() - trained, 3)}
    return LabelErrorReport(tuple(ranked), folds, timings)
