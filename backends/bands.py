"""Band mapping: how a multi-band or high-bit-depth image becomes the 8-bit BGR a model sees.

Multispectral cameras (RGB+NIR), thermal cameras and scientific TIFFs give more than three
bands or more than 8 bits. A `BandMapping` says which source bands make the R, G and B the
model sees (1-based, e.g. "4,1,2": NIR, red, green as false colour; "1": one band as gray) and
the percentile stretch that turns 16-bit / float data into 8-bit per band. One mapping per
project is used for prediction, SAM, training and quality checks, and each trained version
records it (`str(mapping)` parses back to the same mapping).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
DEFAULT_STRETCH = (2.0, 98.0)  # percentiles: 2 % of the darkest and brightest pixels saturate
_SAMPLE = 1 << 18  # pixels per band the percentiles are computed on (a regular sub-grid)
_warned: set[int] = set()  # band counts already warned about (once per process)


class BandError(ValueError):
    """The image lacks a band the mapping asks for; the message says which."""


@dataclass(frozen=True)
class BandMapping:
    """Which source bands the model sees as R, G, B, and the percentile stretch.

    `bands` are 1-based band numbers: three (R, G, B) or one (gray, replicated to three);
    empty means "auto": bands 1-3 (or the single band). `low`, `high` are the percentiles that
    map to 0 and 255 for 16-bit and float data (8-bit data is not stretched).
    """

    bands: tuple[int, ...] = ()
    low: float = DEFAULT_STRETCH[0]
    high: float = DEFAULT_STRETCH[1]

    def __post_init__(self) -> None:
        if len(self.bands) not in (0, 1, 3):
            raise ValueError(
                f"bands '{_join(self.bands)}': give 3 bands for R,G,B (e.g. '4,1,2') or 1 band "
                f"shown as gray (e.g. '1'), not {len(self.bands)}"
            )
        if any(b < 1 for b in self.bands):
            raise ValueError(f"bands '{_join(self.bands)}': band numbers start at 1")
        if not 0 <= self.low < self.high <= 100:
            raise ValueError(
                f"stretch '{_num(self.low)},{_num(self.high)}': give two percentiles from 0 to "
                "100, low below high (e.g. '2,98'; '0,100' is plain min-max)"
            )

    @classmethod
    def parse(cls, text: str, stretch: str | None = None) -> BandMapping:
        """'4,1,2', '1', 'auto' or '' (bands 1-3), optionally followed by ' stretch 2,98';
        `stretch` ('2,98') overrides the one in `text`. ValueError says what is wrong."""
        words = re.sub(r"\s*,\s*", ",", text.strip()).split()
        band_text = words[0] if words else ""
        if len(words) == 3 and words[1] == "stretch":
            stretch = words[2] if stretch is None else stretch
        elif len(words) > 1:
            raise ValueError(f"bands '{text}': write e.g. '4,1,2' or '4,1,2 stretch 2,98'")
        return cls(_parse_bands(band_text), *_parse_stretch(stretch))

    @property
    def is_auto(self) -> bool:
        """No bands chosen and the default stretch: what decoding does without a mapping."""
        return not self.bands and (self.low, self.high) == DEFAULT_STRETCH

    @property
    def band_text(self) -> str:
        return _join(self.bands) if self.bands else "auto"

    @property
    def stretch_text(self) -> str:
        return f"{_num(self.low)},{_num(self.high)}"

    def __str__(self) -> str:
        return f"{self.band_text} stretch {self.stretch_text}"

    def to_bgr(self, stack: np.ndarray) -> np.ndarray:
        """(H, W, bands) of any numeric dtype → (H, W, 3) uint8 BGR. BandError when a chosen
        band is missing."""
        count = stack.shape[2]
        chosen = self.bands or _auto_bands(count)
        missing = [b for b in chosen if b > count]
        if missing:
            raise BandError(
                f"band {missing[0]} does not exist: the image has {count} band"
                f"{'s' if count != 1 else ''} (the project's band mapping is '{self.band_text}'"
                "; change it with `labelpilot settings PROJECT --bands ...`)"
            )
        eight = {b: self._eight_bit(stack[:, :, b - 1]) for b in set(chosen)}
        if len(chosen) == 1:
            return np.repeat(eight[chosen[0]][:, :, None], 3, axis=2)
        red, green, blue = chosen
        return np.stack([eight[blue], eight[green], eight[red]], axis=2)

    def _eight_bit(self, band: np.ndarray) -> np.ndarray:
        """One band as uint8: 8-bit as it is; anything else stretched between percentiles."""
        if band.dtype == np.uint8:
            return np.ascontiguousarray(band)
        if band.dtype == np.bool_:
            return band.astype(np.uint8) * 255
        if band.dtype.kind == "u" and band.dtype.itemsize == 2:
            return self._sixteen_bit(band.astype(np.uint16, copy=False))
        low, high = self._limits(band)
        if high <= low:
            return np.zeros(band.shape, np.uint8)
        scaled = (band.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(scaled, 0, 255).astype(np.uint8)

    def _sixteen_bit(self, band: np.ndarray) -> np.ndarray:
        """uint16 (the common camera case), fast: percentiles from a histogram of a sub-grid,
        then a 65536-entry lookup table instead of float arithmetic on every pixel."""
        step = max(1, int(np.ceil(np.sqrt(band.size / _SAMPLE))))
        cumulative = np.cumsum(np.bincount(band[::step, ::step].ravel(), minlength=1 << 16))
        last = cumulative[-1] - 1
        low, high = (
            int(np.searchsorted(cumulative, p / 100 * last, side="right"))
            for p in (self.low, self.high)
        )
        if high <= low:  # most pixels equal (a small object on a flat background): min-max
            used = np.flatnonzero(np.diff(cumulative, prepend=0))
            low, high = int(used[0]), int(used[-1])
        if high <= low:
            return np.zeros(band.shape, np.uint8)
        scale = np.float32(255.0 / (high - low))
        ramp = (np.arange(1 << 16, dtype=np.float32) - np.float32(low)) * scale
        return np.clip(ramp, 0, 255).astype(np.uint8)[band]

    def _limits(self, band: np.ndarray) -> tuple[float, float]:
        step = max(1, int(np.ceil(np.sqrt(band.size / _SAMPLE))))
        sample = band[::step, ::step].ravel()
        if sample.dtype.kind == "f":
            sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return 0.0, 0.0
        low, high = (float(v) for v in np.percentile(sample, (self.low, self.high)))
        if high <= low:  # most pixels equal (a small object on a flat background): min-max
            low, high = float(sample.min()), float(sample.max())
        return low, high


def _auto_bands(count: int) -> tuple[int, ...]:
    if count < 3:
        return (1,)  # gray, or gray + an extra band
    if count > 3 and count not in _warned:
        _warned.add(count)
        log.warning(
            "an image has %d bands: the model sees bands 1-3 as R,G,B; set the "
            "project's band mapping (`labelpilot settings PROJECT --bands 4,1,2`) to "
            "choose others",
            count,
        )
    return (1, 2, 3)


def _parse_bands(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "auto"):
        return ()
    bands = []
    for part in text.split(","):
        try:
            bands.append(int(part.strip()))
        except ValueError:
            raise ValueError(
                f"bands '{text}': '{part.strip()}' is not a band number (give 1-based band "
                "numbers: '4,1,2' for R,G,B, '1' for one band as gray, or 'auto')"
            ) from None
    return tuple(bands)


def _parse_stretch(text: str | None) -> tuple[float, float]:
    if text is None or not text.strip():
        return DEFAULT_STRETCH
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"stretch '{text}': give two percentiles, low and high, e.g. '2,98'"
        ) from None
    return low, high


def _join(bands: tuple[int, ...]) -> str:
    return ",".join(str(b) for b in bands)


def _num(value: float) -> str:
    return f"{value:g}"
