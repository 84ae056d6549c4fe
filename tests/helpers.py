"""Small helpers shared by tests: generated images with known boxes, box matching."""

from __future__ import annotations

import functools
import http.server
import os
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2

from labelpilot.synthetic import ShapeBox, make_image
from labelpilot.trainers.samples import Sample

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str], timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    """`labelpilot ARGS` in its own process, as an admin runs it (`env` on top of ours)."""
    return subprocess.run([sys.executable, "-m", "labelpilot", *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=timeout)


def run_cvat_cli(url: str, env: dict[str, str], *args: str,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`labelpilot ARGS` against the CVAT at `url` (a personal access token)."""
    return run_cli(*args, env={"CVAT_URL": url, "CVAT_ACCESS_TOKEN": "pat", **env},
                   timeout=timeout)


@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    boxes: tuple[ShapeBox, ...]
    size: int


def generate_images(directory: Path, count: int, seed: int, size: int = 160,
                    prefix: str = "img") -> list[GeneratedImage]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(count):
        sample = make_image(rng, size)
        path = directory / f"{prefix}{seed}_{i}.png"
        cv2.imwrite(str(path), sample.image)
        out.append(GeneratedImage(path, sample.boxes, size))
    return out


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def ls_box(region: dict) -> tuple[float, float, float, float]:
    """An LS rectangle region → pixel xyxy (rotation 0)."""
    v, w, h = region["value"], region["original_width"], region["original_height"]
    x, y = v["x"] * w / 100, v["y"] * h / 100
    return (x, y, x + v["width"] * w / 100, y + v["height"] * h / 100)


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """A quiet static HTTP server on 127.0.0.1 for `directory`; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    with serve_handler(Quiet) as url:
        yield url


@contextmanager
def serve_handler(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 answering with `handler`; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def ground_truth_result(image: GeneratedImage) -> list[dict]:
    """What an annotator would submit in LS for a generated image (percent rectangles)."""
    s = image.size
    return [{"from_name": "label", "to_name": "image", "type": "rectanglelabels",
             "original_width": s, "original_height": s,
             "value": {"x": b.x1 / s * 100, "y": b.y1 / s * 100, "width": (b.x2 - b.x1) / s * 100,
                       "height": (b.y2 - b.y1) / s * 100, "rotation": 0,
                       "rectanglelabels": [b.class_name.capitalize()]}} for b in image.boxes]


@functools.lru_cache(maxsize=2)
def huge_png(width: int, height: int) -> bytes:
    """A real, complete grayscale PNG of width x height zeros (small: it compresses well)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer = zlib.compressobj(1)
    row = bytes(width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def shapes_samples(directory: Path, count: int, seed: int = 77) -> list[Sample]:
    """Generated shape images as training samples with their exact boxes (ids task-0...)."""
    from labelpilot.backends.shapes import BBox, Instance

    return [Sample(f"task-{i}", g.path, g.size, g.size,
                   tuple(Instance(b.class_name, 1.0, box=BBox(b.x1, b.y1, b.x2, b.y2))
                         for b in g.boxes), provenance={"task": str(i)})
            for i, g in enumerate(generate_images(directory, count, seed=seed))]


T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30,
             every: float = 0.1) -> T:
    """`check()`'s first truthy value, polled every `every` s; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)
