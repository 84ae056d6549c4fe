"""Which unlabelled images to label next: pure numpy over `ImageScore`s (`backends.yolo_scoring`).

Strategies (`STRATEGIES`):

- ``random``: a seeded shuffle, the baseline every other order must beat;
- ``uncertainty``: the plain order Label Studio's task score gives: lowest mean top score of
  the regions shown (``region_conf``) first, an image with nothing found first of all;
- ``balanced``: greedy batch selection where each pick maximises
  ``(uncertainty + NEED_WEIGHT × class need) × spread``:

  * uncertainty of a region is the margin between its two most likely outcomes among the
    classes AND background (``1 - max score``), so a confident object, a confident "nothing
    there" and a confident class are all certain; an image sums its most uncertain regions
    (`TOP_REGIONS`), and an image with nothing found gets the median, not the top;
  * class need: the labelled counts per class plus the batch's expected objects so far are
    water-filled towards equal counts (a class takes at most the objects the candidates are
    expected to hold, the rest spills over); an image scores the expected objects (sum of its
    regions' class scores) it adds to classes still short of their quota, weighted by how
    short they are and by how rarely the model predicts the class in the candidates;
  * diversity: k-center greedy on the pooled neck features (standardised, unit length): the
    gain is scaled by the distance to the nearest image already picked in this batch, up to
    `NEAR_COPY` × the candidates' median distance (farther counts as 1), so a batch is not
    ten near-copies yet distinct images compete on information alone.

  Uncertainty and class need enter by rank (0..1], so a few extreme images do not flatten the
  rest; class need weighs `NEED_WEIGHT` times uncertainty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from labelpilot.backends.yolo_scoring import ImageScore

STRATEGIES = ("random", "uncertainty", "balanced")
TOP_REGIONS = 5  # regions per image that count towards its uncertainty
RARITY_SMOOTHING = 0.01  # expected objects per image added to each class's predicted mean
NEED_WEIGHT = 4.0  # class need against uncertainty (both 0..1 by rank)
NEAR_COPY = 0.5  # closer than this × the median distance to a picked image: a near-copy
_EPS = 1e-9


class SelectionError(ValueError):
    """Bad input to `select`: nothing to pick from, a bad count, strategy or score."""


def select(scores: Sequence[ImageScore], count: int, *, strategy: str,
           class_names: Sequence[str], labelled_class_counts: Mapping[str, int] | None = None,
           seed: int = 0, region_conf: float = 0.25) -> list[int]:
    """Indices into `scores` of the images to label next, best first; all of them (in that
    order) when there are `count` or fewer. `labelled_class_counts`: objects per class
    already labelled (classes not named count 0); `region_conf`: the score a region needs to
    be shown to the annotator (used by ``uncertainty``)."""
    _check(scores, count, strategy, class_names, labelled_class_counts)
    count = min(count, len(scores))
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return [int(i) for i in rng.permutation(len(scores))[:count]]
    if strategy == "uncertainty":
        return plain_uncertainty_order(scores, region_conf)[:count]
    counts = np.array([float((labelled_class_counts or {}).get(c, 0)) for c in class_names])
    return balanced_order(scores, count, counts, rng)


def _check(scores: Sequence[ImageScore], count: int, strategy: str, class_names: Sequence[str],
           labelled: Mapping[str, int] | None) -> None:
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy '{strategy}'; use one of {', '.join(STRATEGIES)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SelectionError(f"count must be a positive integer, got {count!r}")
    if not scores:
        raise SelectionError("no candidate images to select from")
    if not class_names:
        raise SelectionError("class_names is empty")
    unknown = sorted(set(labelled or {}) - set(class_names))
    if unknown:
        raise SelectionError(f"labelled_class_counts names unknown classes {unknown}; "
                             f"the model's classes are {list(class_names)}")
    if any(v < 0 for v in (labelled or {}).values()):
        raise SelectionError("labelled_class_counts must not be negative")
    nc, dims = len(class_names), scores[0].features.shape
    for i, s in enumerate(scores):
        if s.features.ndim != 1 or s.features.shape != dims or not np.all(np.isfinite(s.features)):
            raise SelectionError(f"candidate {i}: features must be finite, of one shape {dims}")
        for d in s.detections:
            if d.class_probs.shape != (nc,) or not np.all(np.isfinite(d.class_probs)):
                raise SelectionError(f"candidate {i}: a detection's class_probs is not "
                                     f"{nc} finite scores (one per class)")


# --------------------------------------------------------------------------- per region


def region_uncertainty(class_probs: np.ndarray, kind: str = "margin") -> float:
    """0 (certain) .. 1 (a toss-up) over the outcomes "class c" and "background".

    YOLO class scores are independent sigmoids, so the background's weight is
    ``1 - max score``; the outcome vector is normalised, then ``margin`` is one minus the gap
    between its two largest entries and ``entropy`` its entropy over log(outcomes)."""
    p = np.clip(np.asarray(class_probs, dtype=np.float64), 0.0, 1.0)
    outcomes = np.append(p, 1.0 - p.max(initial=0.0))
    outcomes = outcomes / max(outcomes.sum(), _EPS)
    if kind == "margin":
        top2 = np.sort(outcomes)[-2:]
        return float(1.0 - (top2[1] - top2[0]))
    if kind == "entropy":
        nz = outcomes[outcomes > 0]
        return float(-(nz * np.log(nz)).sum() / np.log(len(outcomes)))
    raise SelectionError(f"unknown uncertainty kind '{kind}'; use margin or entropy")


# --------------------------------------------------------------------------- per image


def image_uncertainties(scores: Sequence[ImageScore], kind: str = "margin") -> np.ndarray:
    """Sum of each image's `TOP_REGIONS` most uncertain regions; nothing found → the median
    of the images with detections (such an image may hide a missed object, or be empty)."""
    values = np.zeros(len(scores))
    found = np.zeros(len(scores), dtype=bool)
    for i, s in enumerate(scores):
        if s.detections:
            u = sorted((region_uncertainty(d.class_probs, kind) for d in s.detections),
                       reverse=True)
            values[i] = sum(u[:TOP_REGIONS])
            found[i] = True
    if found.any():
        values[~found] = float(np.median(values[found]))
    return values


def class_mass(scores: Sequence[ImageScore], nc: int) -> np.ndarray:
    """(images, nc): expected objects per class, the sum of the regions' class scores."""
    mass = np.zeros((len(scores), nc))
    for i, s in enumerate(scores):
        for d in s.detections:
            mass[i] += np.clip(d.class_probs, 0.0, 1.0)
    return mass


def quota_shortfall(counts: np.ndarray, added: float,
                    capacity: np.ndarray | None = None) -> np.ndarray:
    """Per class, the fraction of its quota still missing, 0..1.

    Quotas water-fill `added` new objects onto `counts` towards equal counts, so the least
    labelled classes get them first; a class takes at most its `capacity` (the objects of it
    the candidates are expected to hold), the rest spills over to the other classes."""
    cap = np.full(len(counts), np.inf) if capacity is None else np.maximum(capacity, 0.0)

    def poured(level: float) -> float:
        return float(np.minimum(np.maximum(level - counts, 0.0), cap).sum())

    low, high = float(counts.min()), float(counts.max()) + max(added, 0.0)
    if poured(high) <= added:  # every class takes all it can
        level = high
    else:
        for _ in range(60):  # bisection on the water level
            mid = (low + high) / 2
            low, high = (mid, high) if poured(mid) < added else (low, mid)
        level = high
    quota = counts + np.minimum(np.maximum(level - counts, 0.0), cap)
    return np.clip((quota - counts) / np.maximum(quota, _EPS), 0.0, 1.0)


def _normalised_features(scores: Sequence[ImageScore]) -> np.ndarray:
    feats = np.stack([s.features for s in scores]).astype(np.float64)
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-6)
    return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + _EPS)


def _typical_distance(feats: np.ndarray, rng: np.random.Generator, sample: int = 256) -> float:
    """Median distance between two candidates (over a sample of them)."""
    some = feats[rng.permutation(len(feats))[:sample]]
    sq = (some**2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * some @ some.T, 0.0)
    upper = np.sqrt(d2[np.triu_indices(len(some), k=1)])
    return float(np.median(upper)) if upper.size else 1.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """(0, 1] by rank, ties sharing the lower one: robust to a few extreme images, and never
    0, so the diversity factor still tells the lowest-ranked images apart."""
    ordered = np.sort(values)
    return (np.searchsorted(ordered, values, side="left") + 1) / max(len(values), 1)


# --------------------------------------------------------------------------- strategies


def plain_uncertainty_order(scores: Sequence[ImageScore], region_conf: float) -> list[int]:
    """Lowest mean top score of the shown regions first; nothing shown counts as 0."""
    def mean_top(s: ImageScore) -> float:
        tops = [float(d.class_probs.max()) for d in s.detections
                if d.class_probs.size and d.class_probs.max() >= region_conf]
        return sum(tops) / len(tops) if tops else 0.0

    return sorted(range(len(scores)), key=lambda i: (mean_top(scores[i]), i))


def balanced_order(scores: Sequence[ImageScore], count: int, labelled: np.ndarray,
                   rng: np.random.Generator) -> list[int]:
    """Greedy picks maximising (uncertainty + NEED_WEIGHT × class need) × spread, where
    spread is the distance to the nearest pick so far over the near-copy distance, at most 1."""
    n = len(scores)
    unc = _ranks(image_uncertainties(scores))
    mass = class_mass(scores, len(labelled))
    per_image = float(mass.sum(axis=1).mean())
    # an expected object of a class the model rarely predicts is worth more: the few images
    # that have one are the only way to fill that class's quota
    rarity = 1.0 / (mass.mean(axis=0) + RARITY_SMOOTHING)
    feats = _normalised_features(scores)
    near_copy = NEAR_COPY * _typical_distance(feats, rng)
    nearest = np.full(n, np.inf)  # distance to the nearest picked image
    taken = np.zeros(n, dtype=bool)
    batch = np.zeros_like(labelled)
    jitter = rng.uniform(0, 1e-6, n)  # seeded tie-break
    picks: list[int] = []
    for _ in range(count):
        short = quota_shortfall(labelled + batch, per_image * (count - len(picks)),
                                mass[~taken].sum(axis=0))
        need = mass @ (short * rarity)
        need = _ranks(need)
        spread = np.minimum(1.0, nearest / near_copy)
        gain = (unc + NEED_WEIGHT * need) * spread + jitter
        gain[taken] = -np.inf
        best = int(np.argmax(gain))
        picks.append(best)
        taken[best] = True
        batch += mass[best]
        nearest = np.minimum(nearest, np.linalg.norm(feats - feats[best], axis=1))
    return picks
