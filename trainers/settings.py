"""Per-project training settings in Redis, with defaults from `TrainParams`."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import redis

from labelpilot.backends.bands import BandMapping
from labelpilot.backends.redis_text import as_text
from labelpilot.backends.slicing import SliceSpec
from labelpilot.trainers.pipeline import TrainParams
from labelpilot.trainers.quality_settings import thresholds_from

_KEY = "labelpilot:settings:{}"


def load_params(connection: redis.Redis, project: str) -> TrainParams:
    raw = connection.hgetall(_KEY.format(project))
    return TrainParams.from_mapping({as_text(k): as_text(v) for k, v in raw.items()})


def save_params(connection: redis.Redis, project: str, **changes: Any) -> TrainParams:
    merged = {**asdict(load_params(connection, project)),
              **{k: v for k, v in changes.items() if v is not None}}
    params = TrainParams.from_mapping(merged)
    if params.promotion not in ("auto", "manual"):
        raise ValueError("promotion must be 'auto' or 'manual'")
    if not 0 <= params.first_version_floor <= 1:
        raise ValueError("first_version_floor must be between 0 and 1")
    thresholds_from(params)  # the quality thresholds must make sense (ValueError says why)
    if params.slice:  # SliceSpecError (a ValueError) says what range to use
        SliceSpec(params.slice, params.slice_overlap)
    mapping = BandMapping.parse(params.bands, params.stretch)  # ValueError says what is wrong
    params = replace(params, bands=mapping.band_text, stretch=mapping.stretch_text)
    connection.hset(_KEY.format(project), mapping={k: str(v) for k, v in asdict(params).items()})
    return params
