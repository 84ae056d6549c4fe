"""Which parts of a label config make an interactive SAM setup.

A SAM setup is an Image with at least one smart prompt control (``KeyPointLabels`` /
``RectangleLabels`` with ``smart="true"``) and at least one output control (``BrushLabels`` or
``PolygonLabels``) on the same image. The SAM model comes from a ``sam_model="..."`` attribute on
any of those controls, else LABELPILOT_SAM_MODEL. (``model_path`` on a smart control already
means "pre-annotate it with this YOLO model", so SAM has its own attribute.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from labelpilot.adapters.label_studio.config import ServingPlan, truthy

PROMPT_TAGS = {"KeyPointLabels": "keypointlabels", "RectangleLabels": "rectanglelabels"}
TARGET_TAGS: dict[str, Literal["brush", "polygon"]] = {"BrushLabels": "brush",
                                                       "PolygonLabels": "polygon"}
SAM_ATTRIBUTE = "sam_model"


@dataclass(frozen=True)
class SamTarget:
    """An output control: where SAM's mask goes."""

    name: str
    kind: Literal["brush", "polygon"]
    labels: tuple[str, ...]
    explicit_model: bool  # has model_path: YOLO pre-annotates it in batch as well

    @property
    def result_type(self) -> str:
        return "brushlabels" if self.kind == "brush" else "polygonlabels"

    def label_for(self, label: str) -> str | None:
        return next((own for own in self.labels if own.lower() == label.lower()), None)


@dataclass(frozen=True)
class SamSetup:
    to_name: str  # the Image tag's name
    image_key: str  # key in task.data holding the image URL
    prompt_controls: tuple[str, ...]
    targets: tuple[SamTarget, ...]
    model_ref: str | None  # None: LABELPILOT_SAM_MODEL

    def target_for(self, label: str | None) -> tuple[SamTarget, str | None]:
        """(output control, its spelling of the label). Brush before polygon when both fit."""
        ordered = sorted(self.targets, key=lambda t: t.kind != "brush")
        if label is None:
            target = ordered[0]
            return target, target.labels[0] if len(target.labels) == 1 else None
        for target in ordered:
            own = target.label_for(label)
            if own is not None:
                return target, own
        names = ", ".join(f"{t.name} ({', '.join(t.labels)})" for t in ordered)
        raise ValueError(f"the label '{label}' of the clicked region is not a label of any "
                         f"output control ({names}): give the smart control and the "
                         "Brush/PolygonLabels the same label names")


@lru_cache(maxsize=64)
def sam_setups(config: str) -> dict[str, SamSetup]:
    """Interactive SAM setups of a config, by image name (empty when there are none)."""
    from label_studio_sdk.label_interface import LabelInterface

    if not config or not config.strip():
        return {}
    try:
        interface = LabelInterface(config)
    except Exception:
        return {}  # parse_label_config reports invalid configs
    prompts: dict[str, list[str]] = {}
    targets: dict[str, list[SamTarget]] = {}
    refs: dict[str, str] = {}
    keys: dict[str, str] = {}
    for control in interface.controls:
        tag = getattr(control, "tag", "")
        attrs: dict[str, str] = dict(getattr(control, "attr", {}) or {})
        images = [o for o in getattr(control, "objects", []) if o.tag == "Image"]
        if not images or (tag not in PROMPT_TAGS and tag not in TARGET_TAGS):
            continue
        image = images[0]
        keys[image.name] = str(getattr(image, "value", "") or "").lstrip("$")
        if attrs.get(SAM_ATTRIBUTE):
            refs.setdefault(image.name, attrs[SAM_ATTRIBUTE].strip())
        if tag in PROMPT_TAGS and truthy(attrs.get("smart", "")):
            prompts.setdefault(image.name, []).append(control.name)
        elif tag in TARGET_TAGS:
            targets.setdefault(image.name, []).append(SamTarget(
                control.name, TARGET_TAGS[tag], tuple(getattr(control, "labels", ()) or ()),
                "model_path" in attrs))
    return {name: SamSetup(name, keys[name], tuple(prompts[name]), tuple(targets[name]),
                           refs.get(name))
            for name in prompts if name in targets}


def batch_plan(plan: ServingPlan, setups: dict[str, SamSetup]) -> ServingPlan:
    """The controls YOLO pre-annotates: SAM's output controls only when they name a model."""
    sam_only = {(s.to_name, t.name) for s in setups.values() for t in s.targets
                if not t.explicit_model}
    kept = tuple(c for c in plan.controls if (c.to_name, c.name) not in sam_only)
    dropped = tuple(f"{c.name} is filled by SAM clicks" for c in plan.controls
                    if (c.to_name, c.name) in sam_only)
    return ServingPlan(kept, plan.ignored + dropped)
