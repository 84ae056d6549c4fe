"""Cheap image-quality checks on a decoded image: too dark, overexposed, blurry, near-constant,
odd size or band count, plus a perceptual hash for duplicate search (`quality_ledger`).

Every measure is taken on a gray copy whose longer side is at most `SIDE` pixels, so a 640 px
image costs well under a millisecond. The blur measure is a no-reference ratio in the spirit of
Crété-Roffet's "blur effect": how much Laplacian energy a further 3x3 box blur removes. A sharp
image loses most of it (ratio ≈ 0.05-0.2), an already blurred one little (≥ 0.3); unlike the raw
variance of the Laplacian, it does not depend on brightness or contrast, so a dark photo is not
also called blurry.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from labelpilot.backends.bands import BandMapping

FINDINGS = (
    "corrupt",
    "dark",
    "overexposed",
    "blurry",
    "low_information",
    "odd_size",
    "odd_bands",
    "duplicate",
    "near_duplicate",
)
LOW_QUALITY = ("dark", "overexposed", "blurry", "low_information")  # what `low_quality=skip` drops
SIDE = 320  # the gray copy every measure is taken on has its longer side at most this


@dataclass(frozen=True)
class QualityThresholds:
    """When an image counts as low quality. Defaults hold on skimage.data's photos and
    ultralytics' bus.jpg / zidane.jpg (no findings) and catch their darkened, overexposed,
    blurred (Gaussian sigma 3 at 640 px) and constant variants (see tests/test_quality.py)."""

    dark: float = 40.0  # mean brightness (0-255) below this: dark
    overexposed: float = 200.0  # mean brightness above this: overexposed …
    clipped: float = 0.3  # … or this share of pixels at 250 or more (blown highlights)
    blurry: float = 0.3  # blur ratio (0 sharp .. 1) at or above this: blurry
    # the largest colour channel's standard deviation (on a 64 px grid) below this: a
    # near-constant image (the bar drops in proportion for images darker than 64, to 1)
    low_information: float = 6.0
    min_side: int = 32  # a side shorter than this (px): odd_size
    max_aspect: float = 6.0  # longer / shorter side above this: odd_size
    bands: tuple[int, ...] = (1, 3)  # band counts a source file is expected to have
    near_duplicate: int = 6  # perceptual hashes this many bits apart (of 64) or fewer

    def __post_init__(self) -> None:
        rules = {
            "dark": (0 <= self.dark <= 255, "a mean brightness in 0..255"),
            "overexposed": (0 <= self.overexposed <= 255, "a mean brightness in 0..255"),
            "clipped": (0 < self.clipped <= 1, "a share of pixels in (0, 1]"),
            "blurry": (0 < self.blurry <= 1, "a blur ratio in (0, 1]"),
            "low_information": (self.low_information >= 0, "a standard deviation >= 0"),
            "min_side": (self.min_side >= 1, "a side in pixels >= 1"),
            "max_aspect": (self.max_aspect >= 1, "a side ratio >= 1"),
            "bands": (bool(self.bands) and min(self.bands) >= 1, "band counts, e.g. 1,3"),
            "near_duplicate": (0 <= self.near_duplicate <= 32, "hash bits apart, 0..32"),
        }
        for name, (fine, meaning) in rules.items():
            if not fine:
                raise ValueError(f"{name} must be {meaning} (got {getattr(self, name)!r})")


@dataclass(frozen=True)
class QualityReport:
    findings: tuple[str, ...]  # names from FINDINGS, in that order; empty: nothing found
    measures: dict[str, float] = field(default_factory=dict, hash=False)
    phash: str = ""  # 64-bit perceptual hash as 16 hex digits ("" when undecodable)
    reason: str = ""  # why an image is corrupt (the decoder's words), else ""
    duplicate_of: str = ""  # the item a (near) duplicate repeats

    @property
    def ok(self) -> bool:
        return not self.findings

    def with_duplicate(self, finding: str, of: str) -> QualityReport:
        """This report plus a "duplicate" / "near_duplicate" finding naming the item `of`."""
        found = {*self.findings, finding}
        return QualityReport(
            tuple(f for f in FINDINGS if f in found), self.measures, self.phash, self.reason, of
        )


def corrupt(reason: str) -> QualityReport:
    """The report of an image that could not be decoded."""
    return QualityReport(("corrupt",), {}, "", reason)


def gray_copy(image: np.ndarray, side: int = SIDE) -> np.ndarray:
    """8-bit gray, halved by area averaging until its longer side is at most `side` (exact
    halves are OpenCV's fast path: ~20x cheaper than an arbitrary area resize)."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    while max(gray.shape[:2]) > side and min(gray.shape[:2]) >= 2:
        h, w = gray.shape[:2]
        gray = cv2.resize(
            gray[: h - h % 2, : w - w % 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA
        )
    return gray


def _variance(array: np.ndarray) -> float:
    return float(cv2.meanStdDev(array)[1][0, 0]) ** 2


def blur_ratio(gray: np.ndarray) -> float:
    """Share of the Laplacian's variance left after a 3x3 box blur: 0 sharp … 1 blurry."""
    g = gray.astype(np.float32)
    energy = _variance(cv2.Laplacian(g, cv2.CV_32F))
    if energy < 1e-6:
        return 1.0
    return min(1.0, _variance(cv2.Laplacian(cv2.blur(g, (3, 3)), cv2.CV_32F)) / energy)


_N = 32  # imagehash.phash: a 32x32 gray image, the 8x8 lowest frequencies of its DCT
# scipy's unnormalised DCT-II (what imagehash calls) is OpenCV's orthonormal one times these
_SCIPY_SCALE = np.outer(*[np.array([2 * np.sqrt(_N)] + [np.sqrt(2 * _N)] * 7)] * 2)


def phash(gray: np.ndarray) -> str:
    """imagehash.phash of the gray copy (64 bits as 16 hex digits), computed with OpenCV's DCT
    on a 32x32 area average: bit for bit imagehash's answer on that 32x32 image
    (tests/test_quality.py checks it), without its PIL and scipy round trips."""
    small = cv2.resize(gray, (_N, _N), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8] * _SCIPY_SCALE
    bits = np.packbits((low > np.median(low)).ravel())
    return bits.tobytes().hex()


def colour_contrast(image: np.ndarray, side: int = 64) -> float:
    """The largest standard deviation of any colour channel, sampled on a grid of about
    `side` x `side` pixels: a coloured object on a gray of the same brightness has contrast
    here, none in gray."""
    step = max(1, max(image.shape[:2]) // side)
    sample = np.ascontiguousarray(image[::step, ::step])
    return float(np.max(cv2.meanStdDev(sample)[1]))


def measure(image: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    h, w = image.shape[:2]
    gray = gray_copy(image)
    mean = float(cv2.mean(gray)[0])
    clipped = float(np.count_nonzero(gray >= 250)) / gray.size
    return {
        "brightness": round(mean, 2),
        "contrast": round(colour_contrast(image), 2),
        "clipped": round(clipped, 4),
        "blur": round(blur_ratio(gray), 4),
        "width": float(w),
        "height": float(h),
    }, gray


def check_image(
    image: np.ndarray, thresholds: QualityThresholds | None = None, *, bands: int = 3
) -> QualityReport:
    """Findings of one decoded image (BGR or gray uint8); `bands`: bands in its source file.

    A near-constant image is only `low_information` (its blur and exposure say nothing)."""
    t = thresholds or QualityThresholds()
    m, gray = measure(image)
    m["bands"] = float(bands)
    found: set[str] = set()
    # darkening scales contrast down with brightness: below 64 the bar drops in proportion, so
    # a dark photo is "dark" alone while a black or near-constant frame is still flat
    flat_below = max(1.0, t.low_information * min(1.0, m["brightness"] / 64))
    if m["contrast"] < flat_below:
        found.add("low_information")
    else:
        if m["blur"] >= t.blurry:
            found.add("blurry")
    if m["brightness"] < t.dark:
        found.add("dark")
    elif m["brightness"] > t.overexposed or m["clipped"] >= t.clipped:
        found.add("overexposed")
    short, long = sorted((m["width"], m["height"]))
    if short < t.min_side or long / max(short, 1.0) > t.max_aspect:
        found.add("odd_size")
    if bands not in t.bands:
        found.add("odd_bands")
    return QualityReport(tuple(f for f in FINDINGS if f in found), m, phash(gray))


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def header_pixels(data: bytes) -> int:
    """width x height from the file's header (0 when unreadable): no decoding."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:
        return 0
    return int(width) * int(height)


def check_bytes(
    data: bytes,
    thresholds: QualityThresholds | None = None,
    *,
    max_pixels: int,
    bands: BandMapping | None = None,
) -> tuple[QualityReport, np.ndarray | None]:
    """Decode and check a file: (report, the decoded BGR image or None). An undecodable file
    is "corrupt" with the decoder's reason; one over `max_pixels` is "odd_size" (too large to
    use), refused from its header. `bands`: the project's band mapping (as prediction uses)."""
    from labelpilot.backends.images import ImageError, decode_image_info

    try:
        decoded = decode_image_info(data, max_pixels=max_pixels, bands=bands)
    except ImageError as exc:
        pixels = header_pixels(data)
        if pixels > max_pixels:
            return QualityReport(("odd_size",), {"pixels": float(pixels)}, "", str(exc)), None
        return corrupt(str(exc)), None
    return check_image(decoded.image, thresholds, bands=decoded.bands), decoded.image
