"""A project's image-quality thresholds, kept with its other settings (`TrainParams`'
`quality_*` fields, so `labelpilot settings` and PUT /admin/projects/<p>/settings change them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from labelpilot.backends.quality import QualityThresholds

if TYPE_CHECKING:
    from labelpilot.trainers.pipeline import TrainParams

LOW_QUALITY_CHOICES = ("keep", "skip")


def thresholds_from(params: TrainParams) -> QualityThresholds:
    """The thresholds `params` hold; ValueError names a setting that makes no sense."""
    if params.low_quality not in LOW_QUALITY_CHOICES:
        raise ValueError("low_quality must be 'keep' or 'skip'")
    try:
        bands = tuple(int(b) for b in params.quality_bands.replace(" ", "").split(",") if b)
    except ValueError as exc:
        raise ValueError(
            f"quality_bands: band counts separated by commas, e.g. 1,3 "
            f"(got {params.quality_bands!r})"
        ) from exc
    try:
        return QualityThresholds(
            dark=params.quality_dark,
            overexposed=params.quality_overexposed,
            clipped=params.quality_clipped,
            blurry=params.quality_blurry,
            low_information=params.quality_low_information,
            min_side=params.quality_min_side,
            max_aspect=params.quality_max_aspect,
            bands=bands,
            near_duplicate=params.quality_near_duplicate,
        )
    except ValueError as exc:
        raise ValueError(f"quality thresholds: {exc}") from exc


def load_thresholds(connection: redis.Redis, project: str) -> QualityThresholds:
    from labelpilot.trainers.settings import load_params

    return thresholds_from(load_params(connection, project))
