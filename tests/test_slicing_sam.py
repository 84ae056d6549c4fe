"""SAM clicks on huge images: the window around the click is encoded, the mask comes back in
full-image pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from labelpilot.backends.interactive import MaskResult, PointPrompt, Prompt
from labelpilot.backends.sam.crop import (
    CropPolicy,
    Window,
    crop_window,
    segment_cropped,
    shift_prompt,
)
from labelpilot.backends.shapes import BBox
from tests.stub_sam import StubSam


def huge_image(width: int = 3000, height: int = 2500) -> np.ndarray:
    image = np.full((height, width, 3), 120, np.uint8)
    cv2.rectangle(image, (2500, 2100), (2529, 2129), (40, 200, 40), -1)  # 30 px square
    cv2.rectangle(image, (100, 100), (1399, 899), (40, 40, 230), -1)  # 1300 x 800 block
    return image


class Recording:
    """StubSam (a flood fill) that records the sizes of the images it was given."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, image: np.ndarray, prompt: Prompt) -> tuple[MaskResult, str]:
        self.sizes.append((image.shape[1], image.shape[0]))
        return StubSam().segment(image, prompt), "encoded"


def test_windows_hold_the_prompt_snap_to_a_grid_and_stay_inside_the_image():
    policy = CropPolicy(above=2048, side=1024)
    assert crop_window(Prompt((PointPrompt(10, 10),)), 2048, 1500, policy) is None
    near = crop_window(Prompt((PointPrompt(1500, 1200),)), 3000, 2500, policy)
    also = crop_window(Prompt((PointPrompt(1530, 1190),)), 3000, 2500, policy)
    assert near == also == Window(1024, 768, 2048, 1792), "nearby clicks share a window"
    corner = crop_window(Prompt((PointPrompt(2990, 2490),)), 3000, 2500, policy)
    assert corner == Window(1976, 1476, 3000, 2500)
    boxed = crop_window(Prompt(box=BBox(100, 100, 1400, 900)), 3000, 2500, policy)
    assert boxed is not None and boxed.x2 - boxed.x1 >= 1300 * 1.5
    assert boxed.x1 <= 100 and boxed.x2 >= 1400 and boxed.y1 <= 100 and boxed.y2 >= 900
    shifted = shift_prompt(Prompt((PointPrompt(1500, 1200, False),), BBox(1100, 800, 1600, 1300)),
                           Window(1024, 768, 2048, 1792))
    assert shifted == Prompt((PointPrompt(476, 432, False),), BBox(76, 32, 576, 532))


def test_a_click_on_a_huge_image_is_answered_on_its_window_in_full_image_pixels():
    image = huge_image()
    segment = Recording()
    answer = segment_cropped(segment, image, Prompt((PointPrompt(2515, 2115),)))
    assert answer is not None
    result, source = answer
    assert segment.sizes == [(1024, 1024)] and source == "encoded"
    assert result.mask.shape == (2500, 3000)
    ys, xs = np.nonzero(result.mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2500, 2529, 2100, 2129)
    assert result.mask.sum() == 900
    small = segment_cropped(segment, image[:2000, :2000], Prompt((PointPrompt(5, 5),)))
    assert small is None, "an image no larger than the threshold is encoded whole"
    outside = segment_cropped(segment, image, Prompt((PointPrompt(3100, 5),)))
    assert outside is None, "a click outside the image is left to the whole-image check"


def test_an_object_larger_than_the_window_gets_a_larger_window():
    image = huge_image()
    segment = Recording()
    answer = segment_cropped(segment, image, Prompt((PointPrompt(700, 500),)))
    assert answer is not None
    assert segment.sizes == [(1024, 1024), (2048, 2048)]
    ys, xs = np.nonzero(answer[0].mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (100, 1399, 100, 899)


def test_the_sam_interactor_encodes_the_window_on_huge_images(tmp_path: Path):
    from labelpilot.backends.embedding_cache import EmbeddingCache
    from labelpilot.backends.model_ref import ModelLocator
    from labelpilot.backends.sam import SamInteractor
    from labelpilot.backends.sam.refs import parse_sam_ref

    cache: EmbeddingCache = EmbeddingCache(64 * 1024 * 1024, lambda e: e.nbytes)
    sam = SamInteractor.load(parse_sam_ref("random:mobile_sam",
                                           ModelLocator(tmp_path, download=False)),
                             device="cpu", decoder="torch", cache=cache)
    image = huge_image()
    image.setflags(write=False)
    first, source = sam.segment_with_info(image, Prompt((PointPrompt(2515, 2115),)))
    assert cache.stats().computes in (1, 2), "the window (and a doubled one at most)"
    computes = cache.stats().computes
    again, again_source = sam.segment_with_info(image, Prompt((PointPrompt(2520, 2110),)))
    assert (source, again_source) == ("encoded", "memory"), "a nearby click: the same window"
    assert cache.stats().computes == computes
    assert first.mask.shape == again.mask.shape == (2500, 3000)
    window = crop_window(Prompt((PointPrompt(2515, 2115),)), 3000, 2500, side=2048)
    assert window is not None
    outside = first.mask.copy()
    outside[window.y1:window.y2, window.x1:window.x2] = False
    # random weights draw noise, but only inside the window (at most the doubled one)
    assert first.mask.any() and not outside.any()
    assert sam.prewarm(image) is None, "no window is known before a click: nothing to prewarm"
    with pytest.raises(Exception, match="outside"):
        sam.segment(image, Prompt((PointPrompt(3100, 10),)))
