"""SAM's geometry: image → 1024 px padded input, prompts → encoder frame, low-res mask → image.

Prompts use SAM's ONNX convention for both decoders: points with labels 1 (positive) / 0
(negative), a box as two corner points labelled 2 and 3, and a padding point labelled -1 when
there is no box.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from labelpilot.backends.interactive import Prompt
from labelpilot.backends.sam.refs import PromptError

INPUT_SIZE = 1024
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


@dataclass(frozen=True)
class Frame:
    """Sizes that map between the original image and the encoder's 1024 px input."""

    height: int  # original
    width: int
    input_height: int  # resized, before padding
    input_width: int

    @classmethod
    def for_image(cls, height: int, width: int) -> Frame:
        scale = INPUT_SIZE / max(height, width)
        return cls(height, width, int(height * scale + 0.5), int(width * scale + 0.5))


def preprocess(image_bgr: np.ndarray) -> tuple[np.ndarray, Frame]:
    """BGR uint8 H x W x 3 → normalised, padded 1 x 3 x 1024 x 1024 float32 (RGB)."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise PromptError(f"SAM needs a BGR uint8 H x W x 3 image, got {image_bgr.dtype} "
                          f"{image_bgr.shape}")
    height, width = image_bgr.shape[:2]
    frame = Frame.for_image(height, width)
    shrinking = frame.input_width < width
    resized = cv2.resize(image_bgr, (frame.input_width, frame.input_height),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    rgb = resized[:, :, ::-1].astype(np.float32)
    normalised = (rgb - PIXEL_MEAN) / PIXEL_STD
    padded = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    padded[: frame.input_height, : frame.input_width] = normalised
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None]), frame


def encode_prompt(prompt: Prompt, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """(coords 1 x N x 2 float32 in the 1024 frame, labels 1 x N float32); checks bounds."""
    coords: list[tuple[float, float]] = []
    labels: list[float] = []
    for point in prompt.points:
        if not (0 <= point.x <= frame.width and 0 <= point.y <= frame.height):
            raise PromptError(f"point ({point.x:.1f}, {point.y:.1f}) is outside the "
                              f"{frame.width}x{frame.height} image")
        coords.append((point.x, point.y))
        labels.append(1.0 if point.positive else 0.0)
    if prompt.box is not None:
        box = prompt.box
        x1, x2 = sorted((box.x1, box.x2))
        y1, y2 = sorted((box.y1, box.y2))
        x1, x2 = max(0.0, x1), min(float(frame.width), x2)
        y1, y2 = max(0.0, y1), min(float(frame.height), y2)
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise PromptError(f"box ({box.x1:.1f}, {box.y1:.1f})-({box.x2:.1f}, {box.y2:.1f}) "
                              f"has no area inside the {frame.width}x{frame.height} image")
        coords += [(x1, y1), (x2, y2)]
        labels += [2.0, 3.0]
    else:
        coords.append((0.0, 0.0))
        labels.append(-1.0)
    array = np.asarray(coords, dtype=np.float32)
    array[:, 0] *= frame.input_width / frame.width
    array[:, 1] *= frame.input_height / frame.height
    return array[None], np.asarray(labels, dtype=np.float32)[None]


def upscale_mask(low_res: np.ndarray, frame: Frame) -> np.ndarray:
    """One 256 x 256 logit map → bool mask at the original size (SAM's postprocess_masks)."""
    full = cv2.resize(low_res.astype(np.float32), (INPUT_SIZE, INPUT_SIZE),
                      interpolation=cv2.INTER_LINEAR)
    cropped = full[: frame.input_height, : frame.input_width]
    logits = cv2.resize(cropped, (frame.width, frame.height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(logits > 0.0)
