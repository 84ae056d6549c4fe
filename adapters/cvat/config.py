"""What the CVAT function server offers (`CvatConfig`, built once from the settings).

- ``functions`` (``LABELPILOT_CVAT_FUNCTIONS``): detectors from model files, ``name=model``
  pairs separated by commas, e.g. ``shapes=/models/shapes.pt,coco=yolo11n.pt``. Unset: one
  detector per ``LABELPILOT_MODEL_<TASK>`` that is set (named ``yolo-<task>``).
- ``store_keys`` (``LABELPILOT_CVAT_STORE_KEYS``): which model-store keys become detectors
  (comma-separated shell patterns; default ``cvat-*``: the versions trained from CVAT, each with
  a promoted version; ``*`` adds Label Studio projects' ``ls-*`` versions; empty: none).
- ``sam`` (``LABELPILOT_CVAT_SAM``, default LABELPILOT_SAM_MODEL): the SAM model for the
  interactor (a ref as in `labelpilot.backends.sam`); neither set: no interactor.
- ``tracker`` (``LABELPILOT_CVAT_TRACKER=false`` hides the tracker).
- ``direct_ports`` (``LABELPILOT_CVAT_DIRECT_PORTS``): a port range such as ``32001-32016`` for
  CVAT's "direct" invoke mode (one port per function; ``labelpilot serve`` binds them).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

PREFIX = "labelpilot-"
DEFAULT_STORE_KEYS = "cvat-*"  # versions trained from CVAT only
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


@dataclass(frozen=True)
class CvatConfig:
    """The facade's configuration; `parse` checks it once, at start-up."""

    functions: tuple[ConfiguredModel, ...] = ()
    store_keys: tuple[str, ...] = (DEFAULT_STORE_KEYS,)
    sam: str | None = None
    tracker: bool = True
    direct_ports: tuple[int, int] | None = None
    webhook_secret: str | None = None

    @classmethod
    def parse(cls, *, functions: str | None, task_models: dict[str, str],
              store_keys: str = DEFAULT_STORE_KEYS,
              sam: str | None = None, tracker: bool = True, direct_ports: str = "",
              webhook_secret: str | None = None) -> CvatConfig:
        """From the settings' text values; ConfigError says which value is wrong and why.
        `task_models`: the LABELPILOT_MODEL_<TASK> given explicitly, by task."""
        return cls(functions=parse_functions(functions, task_models),
                   store_keys=tuple(p.strip() for p in store_keys.split(",") if p.strip()),
                   sam=sam or None, tracker=tracker, direct_ports=parse_port_range(direct_ports),
                   webhook_secret=webhook_secret or None)

    def store_key_wanted(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in self.store_keys)


def parse_functions(raw: str | None, task_models: dict[str, str]) -> tuple[ConfiguredModel, ...]:
    if raw is None:
        return tuple(ConfiguredModel(f"yolo-{task}", ref)
                     for task, ref in sorted(task_models.items()) if ref)
    out = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, sep, ref = entry.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise ConfigError(f"LABELPILOT_CVAT_FUNCTIONS entry '{entry}' is not name=model "
                              "(e.g. shapes=/models/shapes.pt)")
        out.append(ConfiguredModel(name.strip(), ref.strip()))
    return tuple(out)


def parse_port_range(raw: str) -> tuple[int, int] | None:
    raw = raw.strip()
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
