"""Where models run: the configured device, else CUDA when present, else CPU."""

from __future__ import annotations

from functools import cache


@cache
def select_device(preferred: str = "") -> str:
    """`preferred` (``cpu``, ``cuda:0``, ... from LABELPILOT_DEVICE) when given, else
    ``cuda:0`` when torch sees a GPU, else ``cpu``."""
    forced = preferred.strip()
    if forced:
        return forced
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
