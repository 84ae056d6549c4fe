"""Label config → which controls we serve, with which model, labels and threshold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from labelpilot.backends.slicing import SliceSpec, SliceSpecError
from labelpilot.backends.tasks import TaskSpec, task_spec
from labelpilot.backends.tracking import TRACKERS
from labelpilot.backends.video import VideoError, check_framerate

ControlKind = Literal["rectangle", "obb", "polygon", "brush", "keypoint", "choices", "video"]


@dataclass(frozen=True)
class ControlTasks:
    """The model tasks of one control kind."""

    default: TaskSpec  # the task that serves it by default (its default weights) and trains
    compatible: frozenset[str]  # every task whose outputs it can show (a model_path's model)


def _tasks(default: str, *others: str) -> ControlTasks:
    return ControlTasks(task_spec(default),
                        frozenset(task_spec(t).name for t in (default, *others)))


# control kind → model tasks (LS-specific; the tasks themselves are labelpilot.backends.tasks)
CONTROL_TASKS: dict[ControlKind, ControlTasks] = {
    "rectangle": _tasks("detect", "segment", "pose", "obb"),
    "obb": _tasks("obb"),
    "polygon": _tasks("segment"),
    "brush": _tasks("segment"),
    "keypoint": _tasks("pose"),
    "choices": _tasks("classify"),
    "video": _tasks("detect", "segment", "pose"),
}
RESULT_TYPE: dict[ControlKind, str] = {
    "rectangle": "rectanglelabels", "obb": "rectanglelabels", "polygon": "polygonlabels",
    "brush": "brushlabels", "keypoint": "keypointlabels", "choices": "choices",
    "video": "videorectangle",
}
_TAG_KIND: dict[str, ControlKind] = {
    "RectangleLabels": "rectangle", "PolygonLabels": "polygon", "BrushLabels": "brush",
    "KeyPointLabels": "keypoint", "Choices": "choices", "VideoRectangle": "video",
}



class ConfigError(ValueError):
    """The label config has nothing this backend can serve, or is not a valid config."""


@dataclass(frozen=True)
class VideoSpec:
    """What a VideoRectangle control says about its video and its tracker."""

    framerate: str  # a number, or "$field" to read it from each task's data
    tracker: str  # bytetrack | botsort
    tracker_params: tuple[tuple[str, str], ...] = ()  # <tracker>_<key>="value" overrides
    propagate: bool = False  # model_propagate="true": fill annotators' keyframes by tracking

    def framerate_of(self, data: dict[str, Any]) -> float:
        """The task's frame rate: the attribute's number, or its `$field` in the task data.
        Raises ValueError (VideoError) naming the field or value that is not usable."""
        raw: Any = self.framerate
        if raw.startswith("$"):
            raw = data.get(raw[1:])
            if raw is None:
                raise ValueError(f"the task data has no '{self.framerate[1:]}' field (the "
                                 f"Video tag reads framerate=\"{self.framerate}\")")
        return check_framerate(raw)


@dataclass(frozen=True)
class ControlSpec:
    """One control of the config that a model fills in."""

    name: str
    to_name: str
    kind: ControlKind
    image_key: str  # key in task.data holding the image URL
    labels: tuple[str, ...]
    label_map: dict[str, str] = field(hash=False)  # lower-case model class → LS label
    keypoint_labels: dict[int, str] = field(hash=False)  # keypoint index → LS label
    model_ref: str
    explicit_model: bool  # model_path set on the control: never replaced by trained versions
    threshold: float
    point_threshold: float
    video: VideoSpec | None = None  # VideoRectangle controls: frame rate and tracker
    slicing: SliceSpec | None = None  # model_slice="640": sliced inference (huge images)

    @property
    def result_type(self) -> str:
        return RESULT_TYPE[self.kind]

    def label_for(self, class_name: str) -> str | None:
        return self.label_map.get(class_name.lower())


@dataclass(frozen=True)
class ServingPlan:
    controls: tuple[ControlSpec, ...]
    ignored: tuple[str, ...]  # why other controls of the config are not served

    def by_model(self) -> dict[str, list[ControlSpec]]:
        groups: dict[str, list[ControlSpec]] = {}
        for control in self.controls:
            groups.setdefault(control.model_ref, []).append(control)
        return groups


def store_key(project_id: int | None, control: ControlSpec) -> str | None:
    """Model-store key for the trained versions of one control of one LS project."""
    if project_id is None or control.explicit_model:
        return None
    return f"ls-{project_id}-{control.name}"


@dataclass(frozen=True)
class ControlDefaults:
    """What a control gets when its tag does not say: the model per task
    (LABELPILOT_MODEL_<TASK>, else the task table's weights) and the score threshold
    (LABELPILOT_SCORE_THRESHOLD)."""

    models: tuple[tuple[str, str], ...] = ()  # (task, model reference) pairs
    score_threshold: float = 0.25

    def model(self, task: str) -> str:
        return dict(self.models).get(task) or task_spec(task).default_weights


def default_model(task: str) -> str:
    """The task table's default weights for `task`."""
    return ControlDefaults().model(task)


@lru_cache(maxsize=64)
def parse_label_config(config: str, defaults: ControlDefaults | None = None) -> ServingPlan:
    """Parse an LS label config. Raises ConfigError when nothing in it can be served.
    `defaults`: what controls get when their tags do not say (see ControlDefaults)."""
    defaults = defaults or ControlDefaults()
    from label_studio_sdk.label_interface import LabelInterface

    if not config or not config.strip():
        raise ConfigError("the label config is empty")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML/validation error kinds
        raise ConfigError(f"the label config is not valid XML/LS config: {exc}") from exc
    controls: list[ControlSpec] = []
    ignored: list[str] = []
    video_labels = _video_labels(interface.controls)
    for control in interface.controls:
        if getattr(control, "tag", "") == "Labels" and all(
                o.tag == "Video" for o in getattr(control, "objects", [])):
            continue  # the labels of a VideoRectangle (see _video_labels)
        spec_or_reason = _control_spec(control, defaults, video_labels)
        if isinstance(spec_or_reason, str):
            ignored.append(spec_or_reason)
        else:
            controls.append(spec_or_reason)
    if not controls:
        reasons = "; ".join(ignored) or "it has no control tags"
        raise ConfigError(
            "nothing in this label config can be served: " + reasons + ". labelpilot serves "
            "RectangleLabels, PolygonLabels, BrushLabels, KeyPointLabels and Choices on an Image, "
            "and VideoRectangle with Labels on a Video (see label_config/ for working examples)"
        )
    return ServingPlan(tuple(controls), tuple(ignored))


def truthy(value: object) -> bool:
    """A boolean attribute of a label config tag ("true", "1", "yes")."""
    return str(value).strip().lower() in ("true", "1", "yes")


def _video_labels(controls: Any) -> dict[str, tuple[tuple[str, ...], dict[str, Any]]]:
    """Video object name → the labels (and their attributes) of the Labels tags on it: a
    VideoRectangle holds no labels itself."""
    found: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
    for control in controls:
        if getattr(control, "tag", "") != "Labels":
            continue
        for obj in getattr(control, "objects", []):
            if obj.tag == "Video":
                labels, attrs = found.get(obj.name, ((), {}))
                new = tuple(getattr(control, "labels", ()) or ())
                found[obj.name] = (labels + new,
                                   {**(getattr(control, "labels_attrs", {}) or {}), **attrs})
    return found


def _control_spec(control: object, defaults: ControlDefaults,
                  video_labels: dict[str, tuple[tuple[str, ...], dict[str, Any]]]
                  ) -> ControlSpec | str:
    tag = getattr(control, "tag", "?")
    name = getattr(control, "name", "?")
    attrs: dict[str, str] = dict(getattr(control, "attr", {}) or {})
    kind = _TAG_KIND.get(tag)
    if kind is None:
        return f"{tag} '{name}' is not a control type labelpilot predicts"
    media = "Video" if kind == "video" else "Image"
    images = [o for o in getattr(control, "objects", []) if o.tag == media]
    if not images:
        return f"{tag} '{name}' is not attached to an {media}"
    if truthy(attrs.get("smart", "")) and "model_path" not in attrs:
        return f"{tag} '{name}' is a smart (interactive prompt) control"
    if kind == "rectangle" and truthy(attrs.get("model_obb", "")):
        kind = "obb"
    labels = tuple(getattr(control, "labels", ()) or ())
    label_attrs = getattr(control, "labels_attrs", {}) or {}
    video = None
    if kind == "video":
        labels, label_attrs = video_labels.get(images[0].name, ((), {}))
        if not labels:
            return (f"{tag} '{name}' has no Labels tag on Video '{images[0].name}' (add "
                    f"<Labels toName=\"{images[0].name}\"> with the classes to track)")
        video = _video_spec(images[0], attrs, f"{tag} '{name}'")
    label_map: dict[str, str] = {}
    keypoint_labels: dict[int, str] = {}
    for position, label in enumerate(labels):
        la = dict(getattr(label_attrs.get(label), "attr", {}) or {})
        for alias in (la.get("predicted_values") or "").split(","):
            if alias.strip():
                label_map.setdefault(alias.strip().lower(), label)
        label_map.setdefault(label.lower(), label)
        if kind == "keypoint":
            index = _number(la, "model_index", position, int, f"Label '{label}' of {tag}")
            keypoint_labels[index] = label
    image = images[0]
    value = str(getattr(image, "value", "") or "")
    return ControlSpec(
        name=name,
        to_name=image.name,
        kind=kind,
        image_key=value.lstrip("$"),
        labels=labels,
        label_map=label_map,
        keypoint_labels=keypoint_labels,
        model_ref=attrs.get("model_path") or defaults.model(CONTROL_TASKS[kind].default.name),
        explicit_model="model_path" in attrs,
        threshold=_number(attrs, "model_score_threshold", defaults.score_threshold, float,
                          f"{tag} '{name}'"),
        point_threshold=_number(attrs, "model_point_threshold", 0.5, float, f"{tag} '{name}'"),
        video=video,
        slicing=_slicing(attrs, kind, f"{tag} '{name}'"),
    )


def _slicing(attrs: dict[str, str], kind: ControlKind, where: str) -> SliceSpec | None:
    """model_slice="640" [model_slice_overlap="0.2"]: sliced inference; ConfigError (a 422)
    naming the attribute when a value is bad or the control cannot be sliced."""
    size, overlap = attrs.get("model_slice"), attrs.get("model_slice_overlap")
    if size is None or not str(size).strip():
        if overlap is not None and str(overlap).strip():
            raise ConfigError(f"model_slice_overlap on {where} needs model_slice (the slice "
                              "size in pixels, e.g. model_slice=\"640\")")
        return None
    if kind not in ("rectangle", "polygon", "brush"):
        raise ConfigError(f"model_slice on {where}: sliced inference serves RectangleLabels, "
                          "PolygonLabels and BrushLabels on an Image")
    try:
        return SliceSpec.parse(size, overlap)
    except SliceSpecError as exc:
        attribute = "model_slice_overlap" if "overlap" in str(exc) else "model_slice"
        raise ConfigError(f"{attribute}=\"{str(attrs.get(attribute))[:40]}\" on {where}: "
                          f"{exc}") from exc


def _video_spec(video: Any, attrs: dict[str, str], where: str) -> VideoSpec:
    """Frame rate from the Video tag (LS lower-cases attribute names: frameRate = framerate;
    default 24) and the tracker from the control."""
    video_attrs = {str(k).lower(): str(v) for k, v in (getattr(video, "attr", {}) or {}).items()}
    framerate = video_attrs.get("framerate", "24").strip() or "24"
    if not framerate.startswith("$"):
        try:
            check_framerate(framerate)  # type: ignore[arg-type]  # a number as text is fine
        except VideoError as exc:
            raise ConfigError(f"Video '{video.name}': {exc}") from exc
    tracker = attrs.get("model_tracker", "bytetrack").strip().lower()
    if tracker not in TRACKERS:
        raise ConfigError(f"model_tracker=\"{tracker[:40]}\" on {where} is not one of "
                          f"{', '.join(TRACKERS)}")
    params = tuple(sorted((k[len(tracker) + 1:], v) for k, v in attrs.items()
                          if k.startswith(f"{tracker}_")))
    return VideoSpec(framerate, tracker, params, truthy(attrs.get("model_propagate", "")))


def _number(attrs: dict[str, str], key: str, default: Any, kind: Callable[[str], Any],
            where: str) -> Any:
    """A numeric attribute of a tag; ConfigError (a 422) naming it when it is not a number."""
    raw = attrs.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return kind(str(raw).strip())
    except ValueError as exc:
        raise ConfigError(f"{key}=\"{str(raw)[:40]}\" on {where} is not a "
                          f"{'whole number' if kind is int else 'number'}") from exc
