"""Holdout mAP vs labelled images: the backend's uncertainty order against random order.

    .venv/bin/python -m bench.learning_curve [--budgets 10,20,40] [--epochs 10] [--pool 120]
                                             [--out docs/learning_curve.png] [--work-dir DIR]

A pool of generated shape images stands in for unlabelled Label Studio tasks; their exact
ground truth (`labelpilot.synthetic.make_image`) stands in for the annotator. For every
budget k
each strategy picks k pool images once, from the weak start model (one-shot, like a first
round of labelling):

- "uncertainty": the start model predicts the pool and each image gets the score Label Studio
  sorts by (`labelpilot.adapters.label_studio.results.task_score` on the regions
  `control_results` builds
  for `label_config/detection_shapes.xml`); the k highest scores are labelled;
- "random": the pool shuffled with a fixed seed, first k.

Then the weak model is fine-tuned on the k labelled images (same epochs and seeds for both
strategies; best.pt is picked on a small separate val set) and scored on a fixed holdout set
that no run ever trains or selects on. Budget 0 is the start model itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OMP_THREADS = "2"
LABEL_CONFIG = REPO / "label_config" / "detection_shapes.xml"
STRATEGIES = ("random", "uncertainty")
_START = time.monotonic()


@dataclass(frozen=True)
class Config:
    budgets: tuple[int, ...]
    pool: int
    pool_seed: int
    holdout: int
    holdout_seed: int
    val: int
    val_seed: int
    size: int
    epochs: int
    imgsz: int
    batch: int
    train_seed: int
    shuffle_seed: int
    out: Path
    json_out: Path
    work_dir: Path | None


@dataclass(frozen=True)
class Metrics:
    map50_95: float
    map50: float


@dataclass(frozen=True)
class Setup:
    """Everything the runs share: data on disk, the start model and its pool scores."""

    cfg: Config
    root: Path
    start: Path  # weak start model weights
    holdout_yaml: Path
    pool: list[Any]  # ShapeImage
    pool_paths: list[Path]
    scores: list[float]  # start model's task score per pool image


@dataclass(frozen=True)
class Run:
    strategy: str
    budget: int
    selected: list[int]  # pool indices, in selection order
    objects: int  # ground-truth boxes in the selected images
    mean_task_score: float  # start model's task score, mean over the selected images
    metrics: Metrics
    seconds: float


# --------------------------------------------------------------------------- setup


def log(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", flush=True)


def configure_offline() -> None:
    """Pin the thread count and keep ultralytics offline; call before importing it."""
    os.environ["OMP_NUM_THREADS"] = OMP_THREADS
    from labelpilot.backends.offline import configure_ultralytics

    configure_ultralytics(REPO / ".ultralytics")


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m bench.learning_curve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--budgets", default="10,20,40", help="labelled images per run (comma list)")
    p.add_argument("--pool", type=int, default=120, help="unlabelled pool size")
    p.add_argument("--pool-seed", type=int, default=1)
    p.add_argument("--holdout", type=int, default=40, help="holdout images (evaluation only)")
    p.add_argument("--holdout-seed", type=int, default=2)
    p.add_argument("--val", type=int, default=10, help="val images (ultralytics best.pt pick)")
    p.add_argument("--val-seed", type=int, default=3)
    p.add_argument("--size", type=int, default=160, help="generated image side in px")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-seed", type=int, default=0, help="ultralytics seed, every run")
    p.add_argument("--shuffle-seed", type=int, default=0, help="seed of the random order")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "learning_curve.png")
    p.add_argument(
        "--json",
        dest="json_out",
        type=Path,
        default=None,
        help="numbers as JSON (default: --out with .json)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep datasets and runs here (default: a temporary directory)",
    )
    a = p.parse_args(argv)
    budgets = tuple(sorted({int(b) for b in a.budgets.split(",") if b.strip()}))
    if not budgets or budgets[0] < 2 or budgets[-1] > a.pool:
        p.error(f"budgets must be between 2 and --pool ({a.pool}): {a.budgets}")
    json_out = a.json_out or a.out.with_suffix(".json")
    return Config(**{**vars(a), "budgets": budgets, "json_out": json_out})


# --------------------------------------------------------------------------- data


def label_lines(image: Any, size: int) -> list[str]:
    """YOLO detect label lines of a `ShapeImage` (same format as `write_detection_dataset`)."""
    from labelpilot.synthetic import CLASSES

    return [
        f"{CLASSES.index(b.class_name)} {(b.x1 + b.x2) / 2 / size:.6f} "
        f"{(b.y1 + b.y2) / 2 / size:.6f} {(b.x2 - b.x1) / size:.6f} "
        f"{(b.y2 - b.y1) / size:.6f}"
        for b in image.boxes
    ]


def generate(count: int, size: int, seed: int) -> list[Any]:
    from labelpilot.synthetic import make_image

    rng = random.Random(seed)
    return [make_image(rng, size) for _ in range(count)]


def write_split(root: Path, split: str, images: Sequence[Any], size: int) -> list[Path]:
    """images/<split>/NNNN.png + labels/<split>/NNNN.txt; returns the image paths."""
    import cv2

    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sample in enumerate(images):
        path = root / "images" / split / f"{i:04d}.png"
        cv2.imwrite(str(path), sample.image)
        (root / "labels" / split / f"{i:04d}.txt").write_text(
            "\n".join(label_lines(sample, size)) + "\n"
        )
        paths.append(path)
    return paths


def write_yaml(path: Path, root: Path, train: str, val: str) -> Path:
    from labelpilot.synthetic import CLASSES

    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    path.write_text(f"path: {root.resolve()}\ntrain: {train}\nval: {val}\nnames:\n{names}\n")
    return path


# --------------------------------------------------------------------------- selection


def task_scores(weights: Path, images: Sequence[Any]) -> list[float]:
    """Each image's score exactly as the backend returns it to Label Studio."""
    from labelpilot.adapters.label_studio.config import parse_label_config
    from labelpilot.adapters.label_studio.results import control_results, task_score
    from labelpilot.backends.yolo import YoloModel

    control = parse_label_config(LABEL_CONFIG.read_text()).controls[0]
    model = YoloModel(str(weights), device="cpu")
    predictions = model.predict([s.image for s in images], conf=control.threshold)
    return [task_score(control_results(control, p)) for p in predictions]


def uncertainty_order(scores: Sequence[float]) -> list[int]:
    """Most uncertain first (highest task score), ties by pool index."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def random_order(count: int, seed: int) -> list[int]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


# --------------------------------------------------------------------------- train / eval


def evaluate(weights: Path, holdout_yaml: Path, imgsz: int) -> Metrics:
    from labelpilot.synthetic import CLASSES
    from labelpilot.trainers.yolo_train import evaluate_yolo

    values = evaluate_yolo(
        str(weights), holdout_yaml, imgsz=imgsz, task="detect", class_names=CLASSES
    )
    if values is None:
        raise SystemExit(f"{weights} does not predict the classes {CLASSES}")
    return Metrics(round(values["map50_95"], 4), round(values["map50"], 4))


def fine_tune(setup: Setup, selected: Sequence[int], name: str) -> Path:
    """Fine-tune the start model on the selected pool images; val = the separate val split."""
    from labelpilot.trainers.yolo_train import train_yolo

    cfg, root = setup.cfg, setup.root
    listing = root / f"{name}.txt"
    listing.write_text("\n".join(str(setup.pool_paths[i].resolve()) for i in selected) + "\n")
    data = write_yaml(root / f"{name}.yaml", root, listing.name, "images/val")
    out = root / "runs" / name
    return train_yolo(
        str(setup.start),
        data,
        out,
        epochs=cfg.epochs,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        seed=cfg.train_seed,
    )


def run_one(setup: Setup, strategy: str, order: Sequence[int], budget: int) -> Run:
    began = time.monotonic()
    selected = list(order[:budget])
    log(f"{strategy:>11} k={budget:<3} fine-tuning {setup.cfg.epochs} epochs ...")
    weights = fine_tune(setup, selected, f"{strategy}-{budget}")
    metrics = evaluate(weights, setup.holdout_yaml, setup.cfg.imgsz)
    seconds = round(time.monotonic() - began, 1)
    log(
        f"{strategy:>11} k={budget:<3} holdout mAP50-95 {metrics.map50_95:.3f} "
        f"mAP50 {metrics.map50:.3f} ({seconds:.0f} s)"
    )
    objects = sum(len(setup.pool[i].boxes) for i in selected)
    mean_score = round(sum(setup.scores[i] for i in selected) / budget, 4)
    return Run(strategy, budget, selected, objects, mean_score, metrics, seconds)


# --------------------------------------------------------------------------- report


def table(start: Metrics, runs: Sequence[Run], budgets: Sequence[int]) -> str:
    by = {(r.strategy, r.budget): r.metrics for r in runs}
    rows = [
        f"{'budget':>6}  {'random mAP50-95':>15}  {'uncert. mAP50-95':>16}  "
        f"{'random mAP50':>12}  {'uncert. mAP50':>13}"
    ]
    for k in (0, *budgets):
        rnd = start if k == 0 else by[("random", k)]
        unc = start if k == 0 else by[("uncertainty", k)]
        rows.append(
            f"{k:>6}  {rnd.map50_95:>15.3f}  {unc.map50_95:>16.3f}  "
            f"{rnd.map50:>12.3f}  {unc.map50:>13.3f}"
        )
    return "\n".join(rows)


def plot(path: Path, cfg: Config, start: Metrics, runs: Sequence[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = {
        "random": ("tab:gray", "s", "random order"),
        "uncertainty": ("tab:blue", "o", "uncertainty order (LS task score)"),
    }
    values = {(r.strategy, r.budget): r.metrics.map50_95 for r in runs}
    for strategy, (color, marker, label) in styles.items():
        other = next(s for s in styles if s != strategy)
        points = [(0, start.map50_95)] + [(k, values[(strategy, k)]) for k in cfg.budgets]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, color=color, marker=marker, linewidth=2, label=label)
        for x, y in points[1:]:  # the higher value's label above its point, the lower below
            above = y > values[(other, x)] or (y == values[(other, x)] and strategy == "random")
            ax.annotate(
                f"{y:.3f}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 7 if above else -13),
                ha="center",
                fontsize=8,
                color=color,
            )
    ax.set_xticks([0, *cfg.budgets])
    ax.set_xlabel("labelled images (fine-tuned from the weak start model)")
    ax.set_ylabel("holdout mAP50-95")
    ax.set_title(
        f"Learning curve on generated shapes: pool {cfg.pool}, "
        f"holdout {cfg.holdout}, {cfg.epochs} epochs"
    )
    ax.grid(alpha=0.3)
    ax.margins(y=0.15)
    ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (the JSON is committed)."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def write_json(setup: Setup, start: Metrics, runs: Sequence[Run], seconds: float) -> None:
    cfg = setup.cfg
    config = {k: (shown(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    payload = {
        "config": config,
        "start_model": setup.start.name,
        "start": asdict(start),
        "pool_task_scores": setup.scores,
        "runs": [asdict(r) for r in runs],
        "total_seconds": round(seconds, 1),
    }
    cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
    cfg.json_out.write_text(json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def prepare(cfg: Config, root: Path) -> Setup:
    """Generate pool / val / holdout, score the pool with the start model."""
    from labelpilot.shapes_model import WEAK_RECIPE, ensure_shapes_model

    start = ensure_shapes_model(REPO / ".cache" / "models", WEAK_RECIPE)
    pool = generate(cfg.pool, cfg.size, cfg.pool_seed)
    pool_paths = write_split(root, "pool", pool, cfg.size)
    write_split(root, "val", generate(cfg.val, cfg.size, cfg.val_seed), cfg.size)
    write_split(root, "holdout", generate(cfg.holdout, cfg.size, cfg.holdout_seed), cfg.size)
    holdout_yaml = write_yaml(root / "holdout.yaml", root, "images/val", "images/holdout")
    log(
        f"data: pool {cfg.pool}, val {cfg.val}, holdout {cfg.holdout} images of {cfg.size} px; "
        f"start model {start.name}"
    )
    scores = task_scores(start, pool)
    return Setup(cfg, root, start, holdout_yaml, pool, pool_paths, scores)


def experiment(cfg: Config, root: Path) -> tuple[Setup, Metrics, list[Run]]:
    setup = prepare(cfg, root)
    start = evaluate(setup.start, setup.holdout_yaml, cfg.imgsz)
    scores = setup.scores
    log(
        f"start model: holdout mAP50-95 {start.map50_95:.3f} mAP50 {start.map50:.3f}; "
        f"pool task scores mean {sum(scores) / len(scores):.3f}, "
        f"{sum(s >= 1.0 for s in scores)} with nothing found"
    )
    orders = {
        "random": random_order(cfg.pool, cfg.shuffle_seed),
        "uncertainty": uncertainty_order(scores),
    }
    # interleaved (k=10 random, k=10 uncertainty, ...): a load change hits both strategies
    runs = [run_one(setup, s, orders[s], k) for k in cfg.budgets for s in STRATEGIES]
    return setup, start, runs


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    configure_offline()
    if cfg.work_dir is not None:
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        setup, start, runs = experiment(cfg, cfg.work_dir.resolve())
    else:
        with TemporaryDirectory(prefix="learning-curve-") as tmp:
            setup, start, runs = experiment(cfg, Path(tmp))
    seconds = time.monotonic() - _START
    print()
    print(table(start, runs, cfg.budgets))
    print()
    for r in runs:
        print(
            f"{r.strategy:>11} k={r.budget:<3} objects {r.objects:>3} "
            f"mean task score {r.mean_task_score:.3f}"
        )
    plot(cfg.out, cfg, start, runs)
    write_json(setup, start, runs, seconds)
    print(f"\ntotal {seconds:.0f} s; plot {shown(cfg.out)}, numbers {shown(cfg.json_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
