"""Drift of incoming images against a model version's training images (pure numpy, no Redis).

Each image is described by cheap statistics of a downscaled copy (brightness and contrast per
channel, saturation, colourfulness, edges, sharpness) and, when the model's forward pass gave
them, its pooled backbone features. A window of recent images is compared with the version's
reference sample by a kernel two-sample test per feature group (MMD, RBF kernel with the median
heuristic, seeded permutation test, Bonferroni over the groups), plus the drop in the model's
mean confidence. Degenerate windows (too few distinct images) are reported, never alarmed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

STAT_NAMES = (
    "blue_mean",
    "green_mean",
    "red_mean",
    "blue_std",
    "green_std",
    "red_std",
    "brightness",
    "contrast",
    "saturation_mean",
    "saturation_std",
    "colourfulness",
    "edge_density",
    "sharpness",
)
STATS_SIDE = 96  # statistics are taken on a copy whose longer side is this (cheap, ~0.2 ms)
_EPS = 1e-6


def image_statistics(image: np.ndarray) -> np.ndarray:
    """The statistics of STAT_NAMES for one BGR (or gray) uint8 image, as float32."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    height, width = image.shape[:2]
    scale = STATS_SIDE / max(height, width, 1)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if scale < 0.5:  # nearest to twice the size first: INTER_AREA on a large image is slow
            image = cv2.resize(image, (size[0] * 2, size[1] * 2), interpolation=cv2.INTER_NEAREST)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    means, stds = (v.reshape(-1)[:3] for v in cv2.meanStdDev(image))
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    gray_mean, gray_std = (float(v.reshape(-1)[0]) for v in cv2.meanStdDev(gray))
    saturation = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[:, :, 1]
    sat_mean, sat_std = (float(v.reshape(-1)[0]) for v in cv2.meanStdDev(saturation))
    pixels = image.astype(np.float32)
    blue, green, red = pixels[:, :, 0], pixels[:, :, 1], pixels[:, :, 2]
    rg, yb = red - green, 0.5 * (red + green) - blue  # Hasler & Süsstrunk colourfulness
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    edges = cv2.Canny(gray, 50, 150)
    sharpness = np.log1p(cv2.Laplacian(gray, cv2.CV_32F).var())
    return np.array(
        [
            *means,
            *stds,
            gray_mean,
            gray_std,
            sat_mean,
            sat_std,
            colourfulness,
            np.count_nonzero(edges) / edges.size,
            sharpness,
        ],
        dtype=np.float32,
    )


@dataclass(frozen=True)
class Reference:
    """What a version's training images look like: one row per reference image."""

    stats: np.ndarray  # (n, len(STAT_NAMES))
    features: np.ndarray  # (n, k) pooled backbone features; k = 0 when none were captured
    confidences: np.ndarray  # (n,) the version's mean confidence per image

    def save(self, path: Path) -> None:
        with path.open("wb") as out:
            np.savez_compressed(
                out,
                stats=self.stats,
                features=self.features,
                confidences=self.confidences,
                stat_names=np.array(STAT_NAMES),
            )

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path) as data:
            return cls(
                data["stats"].astype(np.float32),
                data["features"].astype(np.float32),
                data["confidences"].astype(np.float32),
            )

    def __len__(self) -> int:
        return len(self.stats)


def image_confidence(confidences: tuple[float, ...] | list[float]) -> float:
    """One image's confidence: the mean over its predicted regions, 0 when there are none (a
    model that stops finding anything is what a confidence drop should show)."""
    return float(np.mean(confidences)) if len(confidences) else 0.0


def prediction_confidences(prediction: Any) -> tuple[float, ...]:
    """The confidences a `Prediction` carries: its regions' scores, else (classification)
    the top class's probability."""
    if prediction.instances:
        return tuple(float(i.score) for i in prediction.instances)
    return (float(prediction.classes[0].score),) if prediction.classes else ()


@dataclass(frozen=True)
class DriftSettings:
    alpha: float = 0.01  # significance of the two-sample test (after Bonferroni)
    min_window: int = 20  # distinct images a window needs before it is tested
    permutations: int = 500  # p-values down to 1/501: room for Bonferroni over the groups
    max_confidence_drop: float = 0.15  # mean confidence this far below the reference: drift
    seed: int = 0


@dataclass(frozen=True)
class DriftResult:
    drifted: bool
    p_value: float | None  # None: not tested (window too small)
    statistic: float | None  # MMD² of the most significant feature group
    window: int  # images in the window (distinct ones are what counts for the test)
    confidence_drop: float | None  # reference mean confidence minus the window's
    reasons: tuple[str, ...] = ()
    groups: dict[str, float] = field(default_factory=dict)  # p-value per feature group

    def as_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "p_value": self.p_value,
            "statistic": self.statistic,
            "window": self.window,
            "confidence_drop": self.confidence_drop,
            "reasons": list(self.reasons),
            "groups": dict(self.groups),
        }


def standardise(reference: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled by the reference's mean and spread; a feature that is constant in the
    reference keeps its raw unit (no division by ~0)."""
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    std = np.where(std > _EPS * (1 + np.abs(mean)), std, 1.0)
    return (reference - mean) / std, (rows - mean) / std


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 200, seed: int = 0
) -> tuple[float, float]:
    """(MMD², p-value) of samples x and y: RBF kernel with the median heuristic, p-value from
    `permutations` seeded relabellings of the pooled sample ((b + 1) / (B + 1): never 0)."""
    pooled = np.concatenate([x, y]).astype(np.float64)
    n, total = len(x), len(pooled)
    squared = (pooled * pooled).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0.0)
    off_diagonal = distances[~np.eye(total, dtype=bool)]
    positive = off_diagonal[off_diagonal > _EPS]
    bandwidth = float(np.median(positive)) if positive.size else 1.0
    kernel = np.exp(-distances / bandwidth)
    rng = np.random.default_rng(seed)
    labels = np.zeros((permutations + 1, total), dtype=bool)
    labels[:, :n] = True
    labels[1:] = rng.permuted(labels[1:], axis=1)  # row 0: the observed split
    weights = np.where(labels, 1.0 / n, -1.0 / (total - n))
    stats = np.einsum("pi,pi->p", weights @ kernel, weights)  # wᵀKw per split (biased MMD²)
    observed = float(stats[0])
    exceed = int((stats[1:] >= observed - 1e-12).sum())
    return observed, (exceed + 1) / (permutations + 1)


def _explain(reference: np.ndarray, rows: np.ndarray) -> list[str]:
    """The image statistics that moved most, in reference standard deviations."""
    ref, win = standardise(reference, rows)
    shift = win.mean(axis=0) - ref.mean(axis=0)
    order = np.argsort(-np.abs(shift))
    return [
        f"{STAT_NAMES[i]} {'+' if shift[i] > 0 else ''}{shift[i]:.1f} sd"
        for i in order[:3]
        if abs(shift[i]) >= 1.0
    ]


def compare(
    reference: Reference,
    stats: np.ndarray,
    features: np.ndarray | None,
    confidences: np.ndarray,
    settings: DriftSettings | None = None,
) -> DriftResult:
    """Test a window (rows of `stats`, `features`, `confidences`) against `reference`."""
    settings = settings or DriftSettings()
    stats = np.asarray(stats, np.float32).reshape(-1, len(STAT_NAMES))
    size = len(stats)
    window_conf = float(np.mean(confidences)) if size else None
    drop = (
        float(reference.confidences.mean()) - window_conf
        if window_conf is not None and len(reference.confidences)
        else None
    )
    groups: list[tuple[str, np.ndarray, np.ndarray]] = [
        ("image statistics", reference.stats, stats)
    ]
    usable = (
        features is not None
        and reference.features.shape[1] > 0
        and np.asarray(features).shape == (size, reference.features.shape[1])
    )
    if usable:
        groups.append(("backbone features", reference.features, np.asarray(features, np.float32)))
    joined = np.concatenate([g[2] for g in groups], axis=1) if size else stats
    keep = _distinct_index(joined) if size else np.zeros(0, int)
    distinct = len(keep)
    if distinct < settings.min_window or len(reference) < settings.min_window:
        why = (
            f"only {distinct} distinct image(s) in the window (needs {settings.min_window})"
            if distinct < settings.min_window
            else f"the reference has only {len(reference)} images"
        )
        return DriftResult(False, None, None, size, drop, (f"not tested: {why}",))
    p_values: dict[str, float] = {}
    statistics: dict[str, float] = {}
    for name, ref_rows, rows in groups:
        ref_z, win_z = standardise(ref_rows.astype(np.float64), rows[keep].astype(np.float64))
        statistics[name], p_values[name] = mmd_permutation_test(
            ref_z, win_z, settings.permutations, settings.seed
        )
    best = min(p_values, key=lambda g: p_values[g])
    p_value = min(1.0, p_values[best] * len(groups))  # Bonferroni over the groups
    reasons: list[str] = []
    shifted = p_value < settings.alpha
    if shifted:
        reasons.append(f"{best} differ from the training images (MMD p={p_value:.3f})")
        reasons.extend(_explain(reference.stats, stats[keep]))
    confident_drop = drop is not None and drop >= settings.max_confidence_drop
    if confident_drop:
        reasons.append(
            f"mean confidence dropped by {drop:.2f} "
            f"({reference.confidences.mean():.2f} → {window_conf:.2f})"
        )
    return DriftResult(
        shifted or confident_drop, p_value, statistics[best], size, drop, tuple(reasons), p_values
    )


def _distinct_index(rows: np.ndarray) -> np.ndarray:
    """Rows of the window that differ (identical frames count once), in their order."""
    _, index = np.unique(np.round(rows, 4), axis=0, return_index=True)
    return np.sort(index)
