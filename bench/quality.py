"""Detection and false-alarm rates of each image-quality check on a generated corpus, and the
check's throughput.

The good images are the photos that ship with scikit-image (`skimage.data`) and ultralytics
(bus.jpg, zidane.jpg), scaled to 640 px on their longer side. Each gets bad variants: darkened,
overexposed, Gaussian-blurred, flattened to a near-constant colour, shrunk to a thumbnail,
stretched to a strip, re-encoded as a smaller JPEG (a near duplicate) and copied (an exact
duplicate). A check's detection rate is the share of its variants it flags; its false-alarm
rate the share of good images it flags (and, for near duplicates, of pairs of different good
images).

    python -m bench.quality            # prints a JSON report
"""

from __future__ import annotations

import json
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from labelpilot.backends.quality import (
    QualityReport,
    QualityThresholds,
    check_bytes,
    check_image,
    hamming,
)

# photos (not drawings, micrographs or a deep-sky field, which are dark by nature)
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
OTHERS = (
    "cell",
    "checkerboard",
    "colorwheel",
    "horse",
    "hubble_deep_field",
    "logo",
    "microaneurysms",
)  # reported apart: not photos
ASSETS = Path(__import__("ultralytics").__file__).parent / "assets"
SIDE = 640


def _bgr(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        array = (255 * (array - array.min()) / max(float(np.ptp(array)), 1e-9)).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, 2::-1])


def _scaled(image: np.ndarray, side: int = SIDE) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    return cv2.resize(
        image,
        (round(w * scale), round(h * scale)),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
    )


def good_images(names: tuple[str, ...] = PHOTOS) -> dict[str, np.ndarray]:
    """The corpus' good photos, BGR, 640 px on the longer side."""
    import skimage.data

    out = {name: _scaled(_bgr(getattr(skimage.data, name)())) for name in names}
    if names == PHOTOS:
        for asset in ("bus.jpg", "zidane.jpg"):
            image = cv2.imread(str(ASSETS / asset))
            assert image is not None, ASSETS / asset
            out[asset.split(".")[0]] = _scaled(image)
    return out


def variants(image: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Bad variants of one good image, by the finding each should raise."""
    rng = np.random.default_rng(seed)
    mean = image.reshape(-1, 3).mean(axis=0)
    flat = np.clip(mean + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
    w = image.shape[1]
    return {
        "dark": (image.astype(np.float32) * 0.2).astype(np.uint8),
        "overexposed": np.clip(image.astype(np.float32) * 2.5 + 60, 0, 255).astype(np.uint8),
        "blurry": cv2.GaussianBlur(image, (0, 0), 3),
        "low_information": flat,
        "odd_size": cv2.resize(image, (24, 24), interpolation=cv2.INTER_AREA),
        "odd_size_strip": cv2.resize(image, (w, max(1, w // 8)), interpolation=cv2.INTER_AREA),
    }


def _jpeg_copy(image: np.ndarray) -> np.ndarray:
    small = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def rates(thresholds: QualityThresholds | None = None) -> dict[str, Any]:
    """Detection rate per check, false alarms on good photos (and on the other images)."""
    t = thresholds or QualityThresholds()
    good = good_images()
    reports = {name: check_image(image, t) for name, image in good.items()}
    false_alarms = {name: list(r.findings) for name, r in reports.items() if r.findings}
    detected: dict[str, list[int]] = {}
    missed: dict[str, list[str]] = {}
    for index, (name, image) in enumerate(good.items()):
        for kind, bad in variants(image, seed=index).items():
            finding = "odd_size" if kind.startswith("odd_size") else kind
            hit = finding in check_image(bad, t).findings
            detected.setdefault(kind, []).append(hit)
            if not hit:
                missed.setdefault(kind, []).append(name)
        detected.setdefault("odd_bands", []).append(
            "odd_bands" in check_image(image, t, bands=4).findings
        )
    # near duplicates: a half-size JPEG copy vs every distinct pair of good photos
    copies = [hamming(reports[n].phash, check_image(_jpeg_copy(good[n]), t).phash) for n in good]
    pairs = [hamming(reports[a].phash, reports[b].phash) for a, b in combinations(good, 2)]
    detected["near_duplicate"] = [d <= t.near_duplicate for d in copies]
    others = {
        name: list(check_image(image, t).findings) for name, image in good_images(OTHERS).items()
    }
    return {
        "good_images": len(good),
        "false_alarm_rate": round(len(false_alarms) / len(good), 3),
        "false_alarms": false_alarms,
        "detection_rate": {k: round(sum(v) / len(v), 3) for k, v in detected.items()},
        "missed": missed,
        "near_duplicate_false_alarm_rate": round(
            sum(d <= t.near_duplicate for d in pairs) / len(pairs), 3
        ),
        "hash_bits": {"copies_max": max(copies), "distinct_min": min(pairs)},
        "not_photos": others,
    }


def throughput(seconds: float = 3.0) -> dict[str, float]:
    """Images per second through `check_bytes` (decode + check) of 640 px JPEGs, and the
    check alone (ms per image) on one core."""
    images = list(good_images().values())
    files = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for im in images]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        check_bytes(files[done % len(files)], max_pixels=64_000_000)
        done += 1
    decode_and_check = done / (time.perf_counter() - started)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        check_image(images[done % len(images)])
        done += 1
    check_ms = 1000 * (time.perf_counter() - started) / done
    return {
        "decode_and_check_images_per_s": round(decode_and_check, 1),
        "check_ms_per_640px_image": round(check_ms, 3),
    }


def summary(report: QualityReport) -> str:
    return ", ".join(report.findings) or "ok"


if __name__ == "__main__":
    cv2.setNumThreads(1)
    print(json.dumps({"rates": rates(), "throughput": throughput()}, indent=1))
