"""What the CVAT function server offers, from environment variables (read on every call).

- ``LABELPILOT_CVAT_FUNCTIONS``: detectors from model files, ``name=model`` pairs separated by
  commas, e.g. ``shapes=/models/shapes.pt,coco=yolo11n.pt``. Unset: one detector per
  ``LABELPILOT_MODEL_<TASK>`` that is set (named ``yolo-<task>``).
- ``LABELPILOT_CVAT_STORE_KEYS``: which model-store keys become detectors (comma-separated
  shell patterns; default ``*``: every key with a promoted version; empty: none).
- ``LABELPILOT_CVAT_SAM``: the SAM model for the interactor (a ref as in `labelpilot.backends.sam`,
  default LABELPILOT_SAM_MODEL); neither set: no interactor.
- ``LABELPILOT_CVAT_TRACKER=0`` hides the tracker.
- ``LABELPILOT_CVAT_DIRECT_PORTS``: a port range such as ``32001-32016`` for CVAT's "direct"
  invoke mode (one port per function; ``labelpilot serve`` binds them).
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass

PREFIX = "labelpilot-"
_NAME_RE = re.compile(r"[^a-zA-Z0-9_.-]+")


class ConfigError(ValueError):
    """A LABELPILOT_CVAT_* variable is malformed; the message says how to fix it."""


def function_name(name: str) -> str:
    """A CVAT function id (CVAT accepts [a-zA-Z0-9_.-]) with our prefix."""
    return PREFIX + _NAME_RE.sub("-", name).strip("-")


@dataclass(frozen=True)
class ConfiguredModel:
    name: str
    ref: str


def configured_models() -> list[ConfiguredModel]:
    raw = os.environ.get("LABELPILOT_CVAT_FUNCTIONS")
    if raw is None:
        return [ConfiguredModel(f"yolo-{name.removeprefix('LABELPILOT_MODEL_').lower()}", value)
                for name, value in sorted(os.environ.items())
                if name.startswith("LABELPILOT_MODEL_") and value]
    out = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, sep, ref = entry.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise ConfigError(f"LABELPILOT_CVAT_FUNCTIONS entry '{entry}' is not name=model "
                              "(e.g. shapes=/models/shapes.pt)")
        out.append(ConfiguredModel(name.strip(), ref.strip()))
    return out


def store_key_wanted(key: str) -> bool:
    patterns = [p.strip() for p in os.environ.get("LABELPILOT_CVAT_STORE_KEYS", "*").split(",")]
    return any(p and fnmatch.fnmatchcase(key, p) for p in patterns)


def sam_ref() -> str | None:
    return os.environ.get("LABELPILOT_CVAT_SAM") or os.environ.get("LABELPILOT_SAM_MODEL") or None


def tracker_enabled() -> bool:
    return os.environ.get("LABELPILOT_CVAT_TRACKER", "1").strip().lower() not in (
        "0", "false", "no", "off")


def direct_ports() -> tuple[int, int] | None:
    raw = os.environ.get("LABELPILOT_CVAT_DIRECT_PORTS", "").strip()
    if not raw:
        return None
    first, _, last = raw.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError as exc:
        raise ConfigError(f"LABELPILOT_CVAT_DIRECT_PORTS='{raw}' is not a port range like "
                          "32001-32016") from exc
    if not 0 < low <= high < 65536:
        raise ConfigError(f"LABELPILOT_CVAT_DIRECT_PORTS='{raw}' is not a valid port range")
    return low, high
