"""The functions the CVAT facade serves right now: built afresh on every call.

Detectors come from configured model files and from every promoted model-store version (so a
newly trained version shows up in CVAT without a restart); the interactor (SAM) and the
tracker are added when enabled. Each function renders itself as a nuclio function config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from labelpilot.adapters.cvat import config
from labelpilot.adapters.cvat.spec import LabelSpec, model_labels, nuclio_spec
from labelpilot.adapters.cvat.tracker import SUPPORTED_SHAPE_TYPES
from labelpilot.backends.errors import BackendError
from labelpilot.backends.hot_swap import CurrentModels
from labelpilot.backends.model_cache import ModelCache
from labelpilot.backends.model_ref import ModelLocator
from labelpilot.backends.model_store import ModelVersion
from labelpilot.backends.yolo import YoloModel

log = logging.getLogger(__name__)
TRACKER_NAME = config.PREFIX + "tracker"
INTERACTOR_NAME = config.PREFIX + "sam"


@dataclass(frozen=True)
class DetectorFunction:
    name: str
    title: str
    weights: str  # what to load
    task: str
    labels: tuple[LabelSpec, ...]
    version: str
    # `labelpilot settings KEY` that applies (slicing): the store key of a trained version
    # (cvat-task-5), the configured model's name (yolo-detect)
    settings_key: str = ""

    kind = "detector"

    def annotations(self) -> dict[str, str]:
        return {"name": self.title, "type": "detector", "framework": "labelpilot",
                "spec": nuclio_spec(self.labels), "model_version": self.version}

    def description(self) -> str:
        return (f"labelpilot {self.task} model {self.version}: "
                + ", ".join(label.name for label in self.labels[:20]))


@dataclass(frozen=True)
class InteractorFunction:
    name: str
    ref: str

    kind = "interactor"

    def annotations(self) -> dict[str, str]:
        # Booleans are parsed with bool(str) by CVAT: "false" would be True, so only the
        # keys that are true are present. The UI needs interactor version >= 2.
        return {"name": "labelpilot SAM", "type": "interactor", "framework": "labelpilot",
                "spec": "[]", "version": "2", "min_pos_points": "0", "min_neg_points": "0",
                "startswith_box_optional": "true",
                "help_message": "Click the object (Shift+click: exclude an area) or drag a "
                                "box around it"}

    def description(self) -> str:
        return f"Segment Anything ({self.ref}) with a server-side embedding cache"


@dataclass(frozen=True)
class TrackerFunction:
    name: str = TRACKER_NAME

    kind = "tracker"

    def annotations(self) -> dict[str, str]:
        return {"name": "labelpilot template tracker", "type": "tracker",
                "framework": "labelpilot", "spec": "[]",
                "supported_shape_types": ",".join(SUPPORTED_SHAPE_TYPES)}

    def description(self) -> str:
        return ("CPU template tracker (normalised cross-correlation); all state travels in "
                "CVAT's tracker states")


CvatFunction = DetectorFunction | InteractorFunction | TrackerFunction


def nuclio_config(function: CvatFunction, http_port: int | None = None) -> dict[str, Any]:
    """One entry of the nuclio dashboard's ``GET /api/functions``."""
    status: dict[str, Any] = {"state": "ready"}
    if http_port is not None:
        status["httpPort"] = http_port
    return {"metadata": {"name": function.name, "namespace": "nuclio",
                         "labels": {"nuclio.io/project-name": "cvat"},
                         "annotations": function.annotations()},
            "spec": {"description": function.description(), "runtime": "python:3.11",
                     "handler": "labelpilot", "eventTimeout": "120s"},
            "status": status}


class Catalog:
    """Lists the functions. Trained versions come from the store's versions as this process
    serves them (hot-swapped); what a configured model offers is read once per model file, so
    listing and invoking load nothing."""

    def __init__(self, models: ModelCache[YoloModel], current: CurrentModels,
                 settings: config.CvatConfig, locator: ModelLocator):
        self.models = models
        self.settings = settings
        self.locator = locator
        self.current = current
        self.store = current.store
        self._described: dict[str, tuple[str, tuple[LabelSpec, ...]]] = {}
        self._versions: dict[str, DetectorFunction] = {}  # by model_version (key + version)

    def functions(self) -> list[CvatFunction]:
        out: list[CvatFunction] = []
        for configured in self.settings.functions:
            try:
                out.append(self._configured(configured))
            except (BackendError, ValueError) as exc:
                log.warning("CVAT function '%s' (%s) is not served: %s", configured.name,
                            configured.ref, exc)
        for key in self.store.model_keys():
            if not self.settings.store_key_wanted(key):
                continue
            try:
                current = self.current.get(key)
                if current is None:
                    continue
                out.append(self._trained(current))
            except (OSError, ValueError, KeyError, BackendError) as exc:
                log.warning("model-store key '%s' is not served to CVAT: %s", key, exc)
        if self.settings.sam:
            out.append(InteractorFunction(INTERACTOR_NAME, self.settings.sam))
        if self.settings.tracker:
            out.append(TrackerFunction())
        return out

    def _trained(self, current: ModelVersion) -> DetectorFunction:
        """A store version as a detector, its version.json read once per version."""
        known = self._versions.get(current.model_version)
        if known is not None:
            return known
        info = current.info()
        task = str(info.get("task", "detect"))
        source = info.get("trigger") or {}
        count = int(info.get("keypoint_count") or 0)
        if task == "pose" and not count:  # a version written before it was recorded
            count = self.models.get(str(current.weights)).keypoint_count
        labels = model_labels(task, info.get("class_names") or [], count,
                              info.get("keypoint_names") or source.get("keypoint_names"))
        function = DetectorFunction(config.function_name(current.key),
                                    f"labelpilot {current.key}", str(current.weights), task,
                                    labels, current.model_version, current.key)
        if len(self._versions) >= 256:  # many versions promoted over time: start afresh
            self._versions.clear()
        self._versions[current.model_version] = function
        return function

    def _configured(self, configured: config.ConfiguredModel) -> DetectorFunction:
        weights = self.locator.resolve(configured.ref)
        version = self.locator.version(configured.ref)  # changes when the file is replaced
        if version not in self._described:
            if len(self._described) >= 64:  # files replaced many times: start afresh
                self._described.clear()
            model = self.models.get(weights)
            self._described[version] = (model.task, model_labels(
                model.task, model.class_names, model.keypoint_count))
        task, labels = self._described[version]
        return DetectorFunction(config.function_name(configured.name),
                                f"labelpilot {configured.name}", weights, task, labels, version,
                                configured.name)

    def get(self, name: str) -> CvatFunction | None:
        return next((f for f in self.functions() if f.name == name), None)
