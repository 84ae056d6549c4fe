"""Holdout mAP vs labelled images, in rounds: random vs plain uncertainty vs `balanced`.

    .venv/bin/python -m bench.learning_curve [--budgets 20,40,60] [--seeds 0,1,2] [--steps 80]
                                             [--pool 300] [--out docs/learning_curve.png]

Data: `labelpilot.synthetic_hard` (imbalanced 60/30/10 circle/square/triangle, sizes from
1/12 to 1/2.5 of the side, jittered and swapped colours, clutter); its exact ground truth
stands in for the annotator. The holdout and the val split (ultralytics' best.pt pick) are
fixed; every seed draws its own pool, random order and training seed.

Start model: the WEAK shapes model (`labelpilot.shapes_model.WEAK_RECIPE`, trained on the easy
`labelpilot.synthetic` shapes): a model from a related domain that the hard data's clutter,
sizes and imbalance make weak (mostly confident about red circles), the situation active
learning is for. It is not fine-tuned on hard images first, so round 1 starts with no labels.

Rounds (as annotators work): for each budget in turn, the current model scores the unlabelled
rest of the pool (`labelpilot.backends.yolo_scoring.YoloScorer`: one pass, full class-score
vectors and pooled neck features), `labelpilot.trainers.selection.select` picks the next
images (the strategy gets the labelled class counts so far), their ground truth is added,
the current model is fine-tuned on everything labelled so far and scored on the holdout; the
result scores the next round and is the starting point of the next fine-tune (retraining
continues from the current model, as a labelling project's retraining does). Every fine-tune
runs the same number of optimiser steps (`--steps`; epochs = steps × batch / images) with the
seed's training seed and keeps its last weights, so at each budget every strategy's model has
had the same training; only the images differ. (Fine-tuning the start model afresh each round
for a fixed number of epochs was tried first: on 2 CPU cores the affordable 80 to 100 steps
leave a model from another domain mid-way through re-adapting, and the holdout mAP measured
the optimiser's state more than the labels: non-monotone curves, ±0.04 between runs.)

Also timed: scoring 1,000 candidate images with the start model plus `balanced` selection of
one round's images from them, on this process's threads (`OMP_NUM_THREADS=2`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OMP_THREADS = "2"
STRATEGIES = ("random", "uncertainty", "balanced")
HOLDOUT_SEED, VAL_SEED, POOL_SEED_BASE, TIMING_SEED = 2, 3, 1000, 4
_START = time.monotonic()


@dataclass(frozen=True)
class Config:
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    pool: int
    holdout: int
    val: int
    size: int
    steps: int
    imgsz: int
    batch: int
    score_conf: float
    timing_candidates: int
    out: Path
    json_out: Path
    work_dir: Path | None


@dataclass(frozen=True)
class Metrics:
    map50_95: float
    map50: float


@dataclass(frozen=True)
class Run:
    seed: int
    strategy: str
    budget: int
    picked: list[int]  # pool indices picked this round, best first
    class_counts: dict[str, int]  # labelled objects per class after this round
    metrics: Metrics
    seconds: float  # scoring + selection + fine-tuning + evaluation of this round


@dataclass(frozen=True)
class Timing:
    candidates: int
    count: int
    scoring_s: float
    selection_s: float
    threads: str

    @property
    def total_s(self) -> float:
        return round(self.scoring_s + self.selection_s, 2)


# --------------------------------------------------------------------------- setup


def log(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", flush=True)


def configure_offline() -> None:
    """Pin the thread count and keep ultralytics offline; call before importing it."""
    os.environ["OMP_NUM_THREADS"] = OMP_THREADS
    from labelpilot.backends.offline import configure_ultralytics

    configure_ultralytics(REPO / ".ultralytics")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m bench.learning_curve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--budgets", default="20,40,60", help="labelled images after each round")
    p.add_argument("--seeds", default="0,1,2", help="one pool, random order and train seed each")
    p.add_argument("--pool", type=int, default=300, help="unlabelled pool size per seed")
    p.add_argument("--holdout", type=int, default=150, help="holdout images (evaluation only)")
    p.add_argument("--val", type=int, default=10,
                   help="val images (ultralytics validates on them once, at the end)")
    p.add_argument("--size", type=int, default=160, help="generated image side in px")
    p.add_argument("--steps", type=int, default=90, help="optimiser steps per fine-tune")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--score-conf", type=float, default=0.05,
                   help="lowest class score a scored detection keeps")
    p.add_argument("--timing-candidates", type=int, default=1000,
                   help="candidates for the selection timing (0: skip)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "learning_curve.png")
    p.add_argument("--json", dest="json_out", type=Path, default=None,
                   help="numbers as JSON (default: --out with .json)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep datasets and runs here (default: a temporary directory)")
    a = p.parse_args(argv)
    budgets, seeds = _ints(a.budgets), _ints(a.seeds)
    if not budgets or list(budgets) != sorted(set(budgets)) or budgets[0] < 2:
        p.error(f"budgets must increase, from at least 2: {a.budgets}")
    if budgets[-1] > a.pool:
        p.error(f"the last budget ({budgets[-1]}) exceeds --pool ({a.pool})")
    if not seeds or len(set(seeds)) != len(seeds):
        p.error(f"seeds must be distinct: {a.seeds}")
    json_out = a.json_out or a.out.with_suffix(".json")
    return Config(**{**vars(a), "budgets": budgets, "seeds": seeds, "json_out": json_out})


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
    from labelpilot.synthetic_hard import make_hard_images

    return make_hard_images(count, size, seed)


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


def class_counts(images: Sequence[Any]) -> dict[str, int]:
    from labelpilot.synthetic import CLASSES

    counts = Counter(b.class_name for s in images for b in s.boxes)
    return {c: counts.get(c, 0) for c in CLASSES}


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


def fine_tune(cfg: Config, root: Path, weights: Path, paths: Sequence[Path], name: str,
              seed: int) -> Path:
    """Fine-tune `weights` on the listed images for about `cfg.steps` optimiser steps; no
    per-epoch validation, the last weights are kept."""
    from labelpilot.trainers.yolo_train import train_yolo

    listing = root / f"{name}.txt"
    listing.write_text("\n".join(str(p.resolve()) for p in paths) + "\n")
    data = write_yaml(root / f"{name}.yaml", root, listing.name, "images/val")
    epochs = max(1, round(cfg.steps * cfg.batch / len(paths)))
    trained = train_yolo(str(weights), data, root / "runs" / name, epochs=epochs,
                         imgsz=cfg.imgsz, batch=cfg.batch, seed=seed, val=False)
    last = root / "runs" / name / "run" / "weights" / "last.pt"
    return last if last.exists() else trained


# --------------------------------------------------------------------------- rounds


@dataclass
class Track:
    """One strategy's state within one seed: what is labelled and the current model."""

    strategy: str
    weights: Path
    labelled: list[int]


def play_round(cfg: Config, root: Path, seed: int, pool: Sequence[Any],
               paths: Sequence[Path], track: Track, budget: int, holdout_yaml: Path) -> Run:
    from labelpilot.backends.yolo_scoring import YoloScorer
    from labelpilot.synthetic import CLASSES
    from labelpilot.trainers.selection import select

    began = time.monotonic()
    done = set(track.labelled)
    rest = [i for i in range(len(pool)) if i not in done]
    scorer = YoloScorer(str(track.weights), device="cpu", imgsz=cfg.imgsz)
    scores = scorer.score([pool[i].image for i in rest], conf=cfg.score_conf)
    counts = class_counts([pool[i] for i in track.labelled])
    order = select(scores, budget - len(track.labelled), strategy=track.strategy,
                   class_names=CLASSES, labelled_class_counts=counts, seed=seed)
    picked = [rest[i] for i in order]
    track.labelled.extend(picked)
    name = f"s{seed}-{track.strategy}-{budget}"
    track.weights = fine_tune(cfg, root, track.weights, [paths[i] for i in track.labelled],
                              name, seed)
    metrics = evaluate(track.weights, holdout_yaml, cfg.imgsz)
    seconds = round(time.monotonic() - began, 1)
    after = class_counts([pool[i] for i in track.labelled])
    log(f"seed {seed} {track.strategy:>11} k={budget:<3} holdout mAP50-95 "
        f"{metrics.map50_95:.3f} mAP50 {metrics.map50:.3f}; labelled objects "
        f"{'/'.join(str(v) for v in after.values())} ({seconds:.0f} s)")
    return Run(seed, track.strategy, budget, picked, after, metrics, seconds)


def run_seed(cfg: Config, root: Path, start: Path, seed: int, holdout_yaml: Path) -> list[Run]:
    pool = generate(cfg.pool, cfg.size, POOL_SEED_BASE + seed)
    paths = write_split(root, f"pool{seed}", pool, cfg.size)
    pool_counts = "/".join(str(v) for v in class_counts(pool).values())
    log(f"seed {seed}: pool of {cfg.pool} images, objects per class {pool_counts}")
    tracks = [Track(s, start, []) for s in STRATEGIES]
    runs: list[Run] = []
    for budget in cfg.budgets:  # strategies interleaved: a load change hits all of them
        runs.extend(play_round(cfg, root, seed, pool, paths, t, budget, holdout_yaml)
                    for t in tracks)
    return runs


def time_selection(cfg: Config, start: Path) -> Timing:
    """Scoring `timing_candidates` images with the start model + `balanced` selection."""
    from labelpilot.backends.yolo_scoring import YoloScorer
    from labelpilot.synthetic import CLASSES
    from labelpilot.trainers.selection import select

    images = [s.image for s in generate(cfg.timing_candidates, cfg.size, TIMING_SEED)]
    count = cfg.budgets[0]
    began = time.monotonic()
    scorer = YoloScorer(str(start), device="cpu", imgsz=cfg.imgsz)
    scores = scorer.score(images, conf=cfg.score_conf)
    scored = time.monotonic()
    select(scores, count, strategy="balanced", class_names=CLASSES,
           labelled_class_counts={"circle": 30, "square": 10, "triangle": 2}, seed=0)
    ended = time.monotonic()
    return Timing(cfg.timing_candidates, count, round(scored - began, 2),
                  round(ended - scored, 2), os.environ.get("OMP_NUM_THREADS", "?"))


# --------------------------------------------------------------------------- report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(cfg: Config, start: Metrics, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per budget and strategy: mean and std over seeds of mAP50-95, and the mean paired
    difference to random (same seed: same pool, same training seed)."""
    rows: list[dict[str, Any]] = []
    by = {(r.seed, r.strategy, r.budget): r.metrics.map50_95 for r in runs}
    for k in cfg.budgets:
        for s in STRATEGIES:
            values = [by[(seed, s, k)] for seed in cfg.seeds]
            diffs = [by[(seed, s, k)] - by[(seed, "random", k)] for seed in cfg.seeds]
            mean, std = _mean_std(values)
            d_mean, d_std = _mean_std(diffs)
            rows.append({"budget": k, "strategy": s, "map50_95_mean": round(mean, 4),
                         "map50_95_std": round(std, 4), "vs_random_mean": round(d_mean, 4),
                         "vs_random_std": round(d_std, 4), "per_seed": values})
    return rows


def table(cfg: Config, start: Metrics, rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'budget':>6}" + "".join(f"  {s + ' mAP50-95':>22}" for s in STRATEGIES)
    head += "".join(f"  {s + ' - random':>20}" for s in STRATEGIES if s != "random")
    lines = [head, f"{0:>6}" + "".join(f"  {start.map50_95:>22.3f}" for _ in STRATEGIES)]
    for k in cfg.budgets:
        cells = {r["strategy"]: r for r in rows if r["budget"] == k}
        line = f"{k:>6}" + "".join(
            f"  {cells[s]['map50_95_mean']:>14.3f} ± {cells[s]['map50_95_std']:.3f}"
            for s in STRATEGIES)
        line += "".join(
            f"  {cells[s]['vs_random_mean']:>+12.3f} ± {cells[s]['vs_random_std']:.3f}"
            for s in STRATEGIES if s != "random")
        lines.append(line)
    return "\n".join(lines)


def plot(path: Path, cfg: Config, start: Metrics, rows: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"random": ("tab:gray", "s", "random"),
              "uncertainty": ("tab:blue", "o", "plain uncertainty (LS task score)"),
              "balanced": ("tab:orange", "D", "balanced (margin + class quota + k-center)")}
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    xs = [0, *cfg.budgets]
    for n, (s, (color, marker, label)) in enumerate(styles.items()):
        cells = [r for r in rows if r["strategy"] == s]
        mean = [start.map50_95] + [r["map50_95_mean"] for r in cells]
        std = [0.0] + [r["map50_95_std"] for r in cells]
        ax.plot(xs, mean, color=color, marker=marker, linewidth=2, label=label)
        ax.fill_between(xs, [m - d for m, d in zip(mean, std, strict=True)],
                        [m + d for m, d in zip(mean, std, strict=True)], color=color, alpha=0.12)
        for r in cells:  # per-seed points, nudged sideways so they do not hide each other
            ax.scatter([r["budget"] + (n - 1) * 0.8] * len(r["per_seed"]), r["per_seed"],
                       color=color, marker=marker, s=12, alpha=0.5)
    ax.set_xticks(xs)
    ax.set_xlabel(f"labelled images ({len(cfg.budgets)} rounds; start: weak shapes model)")
    ax.set_ylabel("holdout mAP50-95")
    ax.set_title(f"Active learning on hard generated shapes: mean ± std over "
                 f"{len(cfg.seeds)} seeds, pool {cfg.pool}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (the JSON is committed)."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def write_json(cfg: Config, start_weights: Path, start: Metrics, runs: Sequence[Run],
               rows: Sequence[dict[str, Any]], timing: Timing | None, seconds: float) -> None:
    config = {k: (shown(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    payload = {
        "config": config,
        "start_model": start_weights.name,
        "start": asdict(start),
        "summary": list(rows),
        "runs": [asdict(r) for r in runs],
        "selection_timing": ({**asdict(timing), "total_s": timing.total_s}
                             if timing else None),
        "total_seconds": round(seconds, 1),
    }
    cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
    cfg.json_out.write_text(json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def experiment(cfg: Config, root: Path) -> tuple[Path, Metrics, list[Run], Timing | None]:
    from labelpilot.shapes_model import WEAK_RECIPE, ensure_shapes_model

    start = ensure_shapes_model(REPO / ".cache" / "models", WEAK_RECIPE)
    write_split(root, "val", generate(cfg.val, cfg.size, VAL_SEED), cfg.size)
    holdout = generate(cfg.holdout, cfg.size, HOLDOUT_SEED)
    write_split(root, "holdout", holdout, cfg.size)
    holdout_yaml = write_yaml(root / "holdout.yaml", root, "images/val", "images/holdout")
    start_metrics = evaluate(start, holdout_yaml, cfg.imgsz)
    counts = "/".join(str(v) for v in class_counts(holdout).values())
    log(f"start model {start.name}: holdout ({cfg.holdout} images, objects per class "
        f"{counts}) mAP50-95 {start_metrics.map50_95:.3f} mAP50 {start_metrics.map50:.3f}")
    timing = time_selection(cfg, start) if cfg.timing_candidates else None
    if timing:
        log(f"selecting {timing.count} of {timing.candidates} candidates: scoring "
            f"{timing.scoring_s:.1f} s + selection {timing.selection_s:.2f} s = "
            f"{timing.total_s:.1f} s (OMP_NUM_THREADS={timing.threads})")
    runs = [r for seed in cfg.seeds for r in run_seed(cfg, root, start, seed, holdout_yaml)]
    return start, start_metrics, runs, timing


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    configure_offline()
    random.seed(0)
    if cfg.work_dir is not None:
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        start, start_metrics, runs, timing = experiment(cfg, cfg.work_dir.resolve())
    else:
        with TemporaryDirectory(prefix="learning-curve-") as tmp:
            start, start_metrics, runs, timing = experiment(cfg, Path(tmp))
    seconds = time.monotonic() - _START
    rows = summary(cfg, start_metrics, runs)
    print()
    print("holdout mAP50-95, mean ± std over seeds " + ",".join(map(str, cfg.seeds))
          + " (difference: mean ± std of the per-seed differences)")
    print(table(cfg, start_metrics, rows))
    print()
    for r in runs:
        print(f"seed {r.seed} {r.strategy:>11} k={r.budget:<3} labelled objects "
              + " ".join(f"{c} {n}" for c, n in r.class_counts.items()))
    if timing:
        print(f"\nselection from {timing.candidates} candidates ({timing.count} picked): "
              f"{timing.total_s:.1f} s (scoring {timing.scoring_s:.1f} s, selection "
              f"{timing.selection_s:.2f} s, OMP_NUM_THREADS={timing.threads})")
    plot(cfg.out, cfg, start_metrics, rows)
    write_json(cfg, start, start_metrics, runs, rows, timing, seconds)
    print(f"\ntotal {seconds:.0f} s; plot {shown(cfg.out)}, numbers {shown(cfg.json_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
