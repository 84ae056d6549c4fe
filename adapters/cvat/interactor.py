"""Interactor calls: CVAT clicks/box → our `Prompt` → SAM → a CVAT mask shape.

CVAT's UI only uses ``mask`` shapes from interactors: ``points`` is the shape RLE over the
mask's box followed by the inclusive box, and attribute ``spec_id`` 0 carries the confidence
(the UI shows a slider for it).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from labelpilot.adapters.cvat.rle import encode_shape_rle
from labelpilot.backends.interactive import Interactor, MaskResult, PointPrompt, Prompt
from labelpilot.backends.shapes import BBox

if TYPE_CHECKING:
    from labelpilot.backends.sam import SamModels

CONFIDENCE_SPEC_ID = 0


def prompt_from(pos_points: Sequence[tuple[float, float]],
                neg_points: Sequence[tuple[float, float]],
                box: tuple[tuple[float, float], tuple[float, float]] | None) -> Prompt:
    points = tuple(PointPrompt(float(x), float(y), True) for x, y in pos_points) + tuple(
        PointPrompt(float(x), float(y), False) for x, y in neg_points)
    bbox = None
    if box is not None:
        (x1, y1), (x2, y2) = box
        bbox = BBox(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    if not any(p.positive for p in points) and bbox is None:
        raise ValueError("send at least one positive point ('pos_points') or a box "
                         "('obj_bbox')")
    return Prompt(points=points, box=bbox)


def mask_shape(result: MaskResult) -> dict[str, Any] | None:
    """The interactor reply's shape, or None when SAM found nothing."""
    points = encode_shape_rle(result.mask.astype(bool))
    if points is None:
        return None
    return {"type": "mask", "points": points,
            "attributes": [{"spec_id": CONFIDENCE_SPEC_ID,
                            "value": f"{min(1.0, max(0.0, float(result.score))):.4f}"}]}


def load_interactor(ref: str, sam: SamModels) -> Interactor:
    """The process-wide interactor for `ref`.

    ``python:package.module:factory`` calls that factory (any object with the `Interactor`
    protocol); anything else is a SAM model reference, loaded once by `sam`.
    """
    if ref.startswith("python:"):
        module_name, _, attr = ref.removeprefix("python:").partition(":")
        factory = getattr(importlib.import_module(module_name), attr or "create")
        return _cached(ref, factory)
    return sam.get(ref)


_plugins: dict[str, Interactor] = {}


def _cached(ref: str, factory: Any) -> Interactor:
    if ref not in _plugins:
        _plugins[ref] = factory()
    return _plugins[ref]
