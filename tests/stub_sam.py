"""A SAM-shaped stand-in for mask *content* in the CVAT tests (random-weight SAM gives noise).

It implements `labelpilot.backends.interactive.Interactor` with a colour flood fill from the first
positive click (or the box's centre), limited to the box; the real HTTP path, prompt parsing
and RLE encoding are exercised exactly as with SAM. Served through
``LABELPILOT_CVAT_SAM=python:tests.stub_sam:StubSam``.
"""

from __future__ import annotations

import cv2
import numpy as np

from labelpilot.backends.interactive import MaskResult, Prompt


class StubSam:
    model_version = "stub-sam-1"

    def segment(self, image: np.ndarray, prompt: Prompt) -> MaskResult:
        height, width = image.shape[:2]
        positive = [p for p in prompt.points if p.positive]
        if positive:
            seed = (int(positive[0].x), int(positive[0].y))
        else:
            assert prompt.box is not None
            b = prompt.box
            seed = (int((b.x1 + b.x2) / 2), int((b.y1 + b.y2) / 2))
        flood = np.zeros((height + 2, width + 2), np.uint8)
        cv2.floodFill(image.copy(), flood, seed, (0, 0, 0), (30, 30, 30), (30, 30, 30),
                      cv2.FLOODFILL_MASK_ONLY | 4 | (1 << 8))
        mask = flood[1:-1, 1:-1].astype(bool)
        if prompt.box is not None:
            b = prompt.box
            keep = np.zeros_like(mask)
            keep[int(b.y1):int(np.ceil(b.y2)), int(b.x1):int(np.ceil(b.x2))] = True
            mask &= keep
        for point in prompt.points:
            if not point.positive:
                mask[int(point.y), int(point.x)] = False
        return MaskResult(mask, 0.9)


def test_the_stub_fills_the_clicked_shape() -> None:
    image = np.full((60, 60, 3), 120, np.uint8)
    cv2.rectangle(image, (10, 10), (29, 29), (40, 200, 40), -1)
    from labelpilot.backends.interactive import PointPrompt

    result = StubSam().segment(image, Prompt(points=(PointPrompt(20, 20),)))
    assert result.mask.sum() == 400 and result.mask[10:30, 10:30].all()
