"""Label-error detection on generated shapes with injected annotation mistakes.

    .venv/bin/python -m bench.label_errors [--images 300] [--epochs 10] [--fold-epochs 5]
                                           [--folds 2] [--no-served] [--json FILE]

`--images` generated images (`labelpilot.synthetic`, exact boxes) stand in for labelled tasks.
Into distinct images, 10 % each get one mistake:

- missing: one annotated box dropped (an image may be left with no box at all);
- wrong_class: one box's class changed to another class;
- bad_location: one box shifted and rescaled so that its IoU with the true box is 0.40–0.65.

`find_label_errors` then fine-tunes `--folds` models (each on the other folds, `--fold-epochs`)
from the cached shapes model (`labelpilot.shapes_model.RECIPE`, trained on other generated
images, never on these) and ranks the images. For comparison, ONE plain training run: the
product's dataset split (`build_dataset`) of all the images, fine-tuned from the same model
for `--epochs` at the same image size (ultralytics' settings, validating every epoch, as in
production). Times are wall clock and this process's CPU time (the machine may be shared).

Then (unless --no-served) the detection again, started from the plain run's weights: in real
life the served model was trained on the very labels being checked, so its fold models start
out having seen (and partly learned) the mistakes; the targets are judged on the fair start,
the second column shows what that leak costs.

Figures: image-level AUROC (image score vs "has an injected mistake"); precision in the 30
highest-ranked images; recall per kind at the flagging threshold (`--threshold`, default 0.5,
the `LabelErrorReport.flagged` default): an injected mistake is recalled when its image has
a finding of that kind scoring at least the threshold that points at it (wrong_class,
bad_location: the changed annotation's index; missing: a predicted box with IoU ≥ 0.5 with
the dropped box); time of the whole detection / the plain training run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import OMP_THREADS, REPO, bench_main, bench_parser, progress, table

KINDS = ("missing", "wrong_class", "bad_location")
TARGETS = {"auroc": 0.85, "precision_at_30": 0.7, "recall": 0.6, "time_ratio": 1.5}


@dataclass(frozen=True)
class Seconds:
    wall: float
    cpu: float  # this process's CPU time, all threads: what neighbours on the machine don't sway

    def __str__(self) -> str:
        return f"{self.wall:.0f} s ({self.cpu:.0f} s CPU)"


@dataclass(frozen=True)
class Injected:
    sample_id: str
    kind: str
    index: int  # the changed annotation (missing: the dropped box's index in the truth)
    truth: Any  # the true Instance


def iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def sloppy_box(box: Any, size: int, rng: random.Random) -> Any:
    """The box shifted and rescaled, inside the image, with IoU 0.40–0.65 with `box`."""
    from labelpilot.backends.shapes import BBox

    w, h = box.x2 - box.x1, box.y2 - box.y1
    target = rng.uniform(0.40, 0.65)
    while True:
        scale = rng.uniform(0.75, 1.35)
        dx, dy = rng.uniform(-0.45, 0.45) * w, rng.uniform(-0.45, 0.45) * h
        cx, cy = (box.x1 + box.x2) / 2 + dx, (box.y1 + box.y2) / 2 + dy
        nw, nh = w * scale, h * scale * rng.uniform(0.85, 1.15)
        moved = BBox(max(0.0, cx - nw / 2), max(0.0, cy - nh / 2),
                     min(float(size), cx + nw / 2), min(float(size), cy + nh / 2))
        if abs(iou(moved, box) - target) < 0.03:
            return moved


def make_samples(root: Path, count: int, size: int, seed: int, rate: float) -> tuple[
        list[Any], list[Injected]]:
    """Generated images with true labels, then the mistakes injected; (samples, injected)."""
    import cv2

    from labelpilot.backends.shapes import BBox, Instance
    from labelpilot.synthetic import CLASSES, make_image
    from labelpilot.trainers.samples import Sample

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        shape = make_image(rng, size)
        path = root / f"img-{i:04d}.png"
        cv2.imwrite(str(path), shape.image)
        instances = tuple(Instance(b.class_name, 1.0, box=BBox(b.x1, b.y1, b.x2, b.y2))
                          for b in shape.boxes)
        samples.append(Sample(f"img-{i:04d}", path, size, size, instances))
    per_kind = round(count * rate)
    chosen = rng.sample(range(count), per_kind * len(KINDS))
    injected = []
    for n, i in enumerate(chosen):
        kind, sample = KINDS[n // per_kind], samples[i]
        index = rng.randrange(len(sample.instances))
        truth = sample.instances[index]
        boxes = list(sample.instances)
        if kind == "missing":
            del boxes[index]
        elif kind == "wrong_class":
            other = rng.choice([c for c in CLASSES if c != truth.class_name])
            boxes[index] = Instance(other, 1.0, box=truth.box)
        else:
            boxes[index] = Instance(truth.class_name, 1.0, box=sloppy_box(truth.box, size, rng))
        samples[i] = replace(sample, instances=tuple(boxes))
        injected.append(Injected(sample.sample_id, kind, index, truth))
    return samples, injected


def auroc(scores: list[float], positive: list[bool]) -> float:
    """Mann-Whitney AUROC, ties counted half."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def detected_score(error: Injected, findings: Any) -> float:
    """The highest score of a finding of the error's kind that points at it (0: none)."""
    return max((f.score for f in findings if f.kind == error.kind and (
        iou(f.evidence.predicted_box, error.truth.box) >= 0.5 if error.kind == "missing"
        else f.instance_index == error.index)), default=0.0)


def plain_training_run(samples: list[Any], root: Path, start: Path,
                       args: Any) -> tuple[Seconds, Path, set[str]]:
    """One ordinary training run (the product's dataset split, ultralytics' training settings)
    on all the samples: its seconds, its weights and the ids of the images it trained on."""
    from labelpilot.synthetic import CLASSES
    from labelpilot.trainers.dataset import build_dataset
    from labelpilot.trainers.yolo_train import train_yolo

    began, cpu = time.monotonic(), time.process_time()
    dataset = build_dataset(samples, "detect", CLASSES, root / "data")
    weights = train_yolo(str(start), dataset.train_data, root / "train", epochs=args.epochs,
                         imgsz=args.imgsz, batch=args.batch, seed=args.seed)
    trained = {str(m["sample"]) for m in dataset.manifest if m["split"] == "train"}
    return Seconds(time.monotonic() - began, time.process_time() - cpu), weights, trained


def detect(samples: list[Any], work: Path, start: Path, args: Any) -> tuple[Any, Seconds]:
    """`find_label_errors` from `start`; (report, its time)."""
    from labelpilot.synthetic import CLASSES
    from labelpilot.trainers.label_errors import find_label_errors

    last: dict[str, Any] = {}

    def report_progress(event: dict[str, Any]) -> None:
        key = (event.get("fold"), event["phase"])
        if key != last.get("key"):
            progress(f"  {event}")
            last["key"] = key

    began, cpu = time.monotonic(), time.process_time()
    report = find_label_errors(samples, task="detect", class_names=CLASSES, work_dir=work,
                               start_model=str(start), folds=args.folds,
                               epochs=args.fold_epochs, imgsz=args.imgsz, seed=args.seed,
                               batch=args.batch, progress=report_progress)
    return report, Seconds(time.monotonic() - began, time.process_time() - cpu)


def timing(spent: Seconds, train: Seconds) -> dict[str, float]:
    return {"detect_s": round(spent.wall, 1), "detect_cpu_s": round(spent.cpu, 1),
            "time_ratio": round(spent.wall / train.wall, 3),
            "cpu_time_ratio": round(spent.cpu / train.cpu, 3)}


def scores_of(report: Any, samples: list[Any], injected: list[Injected],
              threshold: float) -> dict[str, Any]:
    """AUROC, precision in the top 30, recall per kind at `threshold`, what was flagged."""
    by_id = {r.sample_id: r for r in report.samples}
    wrong = {e.sample_id for e in injected}
    ranked = [r.sample_id for r in report.samples]
    found = {e.sample_id: detected_score(e, by_id[e.sample_id].findings) for e in injected}
    recall = {kind: sum(found[e.sample_id] >= threshold for e in injected if e.kind == kind)
              / sum(e.kind == kind for e in injected) for kind in KINDS}
    flagged = report.flagged(threshold)
    return {
        "auroc": round(auroc([by_id[s.sample_id].score for s in samples],
                             [s.sample_id in wrong for s in samples]), 4),
        "precision_at_30": round(sum(i in wrong for i in ranked[:30]) / 30, 4),
        "recall": {k: round(v, 4) for k, v in recall.items()},
        "flagged": len(flagged),
        "flagged_precision": round(sum(r.sample_id in wrong for r in flagged)
                                   / max(1, len(flagged)), 4),
        "timings": report.timings,
        "top30": [{"sample": r.sample_id, "score": r.score,
                   "injected": next((e.kind for e in injected if e.sample_id == r.sample_id),
                                    None),
                   "kinds": sorted({f.kind for f in r.findings if f.score >= threshold})}
                  for r in report.samples[:30]],
        "injected": [{"sample": e.sample_id, "kind": e.kind, "index": e.index,
                      "score": found[e.sample_id], "image_score": by_id[e.sample_id].score,
                      "rank": ranked.index(e.sample_id) + 1} for e in injected],
    }


def warm_up(start: Path, image: Path, imgsz: int) -> None:
    """Import torch and ultralytics and run the model once, so that the first timed step
    does not pay for what every later one finds ready."""
    from labelpilot.backends.images import decode_image
    from labelpilot.backends.yolo import YoloModel

    YoloModel(str(start), device="cpu").predict([decode_image(image.read_bytes())],
                                                imgsz=imgsz)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from labelpilot.shapes_model import RECIPE, ensure_shapes_model

    start = ensure_shapes_model(REPO / ".cache" / "models", RECIPE)
    with tempfile.TemporaryDirectory(prefix="bench-label-errors-") as tmp:
        work = Path(tmp)
        samples, injected = make_samples(work / "images", args.images, args.size,
                                         args.data_seed, args.rate)
        progress(f"{len(samples)} images, {len(injected)} injected mistakes; "
                 f"start model {start.name}")
        warm_up(start, samples[0].image, args.imgsz)
        report, detect_s = detect(samples, work / "folds", start, args)
        progress(f"label-error detection {detect_s}; now one plain training run")
        train_s, served, trained_on = plain_training_run(samples, work / "plain", start, args)
        progress(f"plain training run {train_s}")
        fair = {**scores_of(report, samples, injected, args.threshold),
                **timing(detect_s, train_s)}
        results: dict[str, Any] = {"fair_start": fair, "train_s": round(train_s.wall, 1),
                                   "train_cpu_s": round(train_s.cpu, 1)}
        if args.served:
            progress("label-error detection again, from the plain run's weights (trained on "
                     "these very labels, as the served model is in real life)")
            report, served_s = detect(samples, work / "folds-served", served, args)
            seen = [e for e in injected if e.sample_id in trained_on]
            results["served_start"] = {
                **scores_of(report, samples, injected, args.threshold),
                **timing(served_s, train_s), "injected_in_its_training_images": len(seen)}
    config = {k: v for k, v in vars(args).items() if k != "json"}
    config.update(start_model=start.name, start_recipe="RECIPE", omp_threads=OMP_THREADS,
                  injected=len(injected))
    return {"config": config, "targets": TARGETS, "results": results}


def render(report: dict[str, Any]) -> str:
    t, c, results = report["targets"], report["config"], report["results"]
    runs = [results["fair_start"], *([results["served_start"]] if "served_start" in results
                                     else [])]

    def row(name: str, key: str, target: str, ok: Any, pick: Any = None) -> list[str]:
        values = [pick(r) if pick else r[key] for r in runs]
        met = ["yes" if ok(v) else "NO" for v in values]
        return [name, target, *(f"{v:.3f} ({m})" for v, m in zip(values, met, strict=True))]

    rows = [["metric", "target", "fair start (met?)",
             *(["served start (met?)"] if len(runs) > 1 else [])],
            row("image-level AUROC", "auroc", f">= {t['auroc']}", lambda v: v >= t["auroc"]),
            row("precision in top 30", "precision_at_30", f">= {t['precision_at_30']}",
                lambda v: v >= t["precision_at_30"])]
    for kind in KINDS:
        rows.append(row(f"recall {kind}", kind, f">= {t['recall']}",
                        lambda v: v >= t["recall"], lambda r, k=kind: r["recall"][k]))
    rows.append(row("detection time / one training run", "time_ratio", f"<= {t['time_ratio']}",
                    lambda v: v <= t["time_ratio"]))
    rows.append(row("  same, process CPU time", "cpu_time_ratio", f"<= {t['time_ratio']}",
                    lambda v: v <= t["time_ratio"]))
    lines = [f"{c['images']} images, {c['injected']} injected mistakes, {c['folds']} folds x "
             f"{c['fold_epochs']} epochs at {c['imgsz']} px (OMP_NUM_THREADS={c['omp_threads']}); "
             f"one training run: {c['epochs']} epochs; "
             f"fair start: {c['start_model']} (RECIPE, never trained on these images)"
             + ("; served start: the plain run's weights (trained on these noisy labels)"
                if len(runs) > 1 else ""), "",
             table(rows), ""]
    for name, r in zip(("fair start", "served start"), runs, strict=False):
        lines.append(f"{name}: flagged (image score >= {c['threshold']}) {r['flagged']} images, "
                     f"precision {r['flagged_precision']:.3f}; detection {r['detect_s']} s "
                     f"({r['detect_cpu_s']} s CPU)")
    lines.append(f"one training run: {results['train_s']} s ({results['train_cpu_s']} s CPU)")
    return "\n".join(lines)


def main() -> int:
    parser = bench_parser("python -m bench.label_errors", __doc__)
    parser.set_defaults(json=REPO / "docs" / "label_errors.json")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rate", type=float, default=0.10, help="share of images per kind")
    parser.add_argument("--size", type=int, default=160, help="generated image side in px")
    parser.add_argument("--data-seed", type=int, default=12)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10, help="the plain training run's")
    parser.add_argument("--fold-epochs", type=int, default=5, help="each fold model's")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="ultralytics seed")
    parser.add_argument("--threshold", type=float, default=0.5, help="flagging threshold")
    parser.add_argument("--no-served", dest="served", action="store_false",
                        help="skip the second detection, from the plain run's weights")
    return bench_main(parser.parse_args(), run, render)


if __name__ == "__main__":
    raise SystemExit(main())
