"""Where models run: CUDA when present, else CPU; `LABELPILOT_DEVICE` overrides."""

from __future__ import annotations

import os
from functools import cache


@cache
def default_device() -> str:
    forced = os.environ.get("LABELPILOT_DEVICE", "").strip()
    if forced:
        return forced
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
