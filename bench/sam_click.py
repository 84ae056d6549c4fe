"""Interactive SAM clicks: what an annotator waits for, per click, in one run.

    .venv/bin/python -m bench.sam_click [--models mobile_sam,vit_b] [--clicks 20] [--misses 3]
                                        [--workers 1] [--json out.json]

For each model (seeded random weights: the timing is the same as with real ones) it measures:

(a) the bare decoder in this process (prompt → best mask at image size, embedding given);
(b) a cache-hit click through HTTP: `POST /predict` with a keypoint context, as Label Studio
    sends it, to the real gunicorn backend; the task image comes from a local HTTP server
    (with --workers > 1 every click opens a new connection, so any worker may answer it);
(c) a cache-miss click: the first click on an image nobody has seen (encoder + decoder);
(d) the first click on a prewarmed task: batch `/predict` on the task first (as LS's
    "retrieve predictions" does), then the click once the background encode is done;

and the ratio (b)/(a), the encoder alone in-process, and the cache memory per cached image
(embedding bytes, and the growth of the worker's private RSS per cached image).
Photos: ultralytics' bus.jpg / zidane.jpg, resized to 1024 px on the long side; every miss and
prewarm image is a distinct variant (flipped, shifted). Redis from REDIS_URL (default DB 13).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    bench_main,
    bench_parser,
    child_pids,
    percentile,
    proc_status_mb,
    progress,
    serve_directory,
    table,
)
from labelpilot.processes import stop_processes

LABEL_CONFIG = REPO / "label_config" / "sam_brush.xml"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"


def make_photos(directory: Path, count: int) -> list[Path]:
    """`count` distinct ~1024 x 768 photos from the two ultralytics assets."""
    import cv2
    import numpy as np
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    bases = [cv2.imread(str(assets / name)) for name in ("zidane.jpg", "bus.jpg")]
    paths = []
    for i in range(count):
        base = bases[i % 2]
        image = np.roll(base, 17 * i, axis=1)
        if i % 4 >= 2:
            image = image[:, ::-1]
        height, width = image.shape[:2]
        scale = 1024 / max(height, width)
        image = cv2.resize(image, (round(width * scale), round(height * scale)),
                           interpolation=cv2.INTER_AREA)
        path = directory / f"photo{i}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def stats(samples_ms: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples_ms, 50), "p95_ms": percentile(samples_ms, 95),
            "n": len(samples_ms)}


def click_points(count: int) -> list[tuple[float, float]]:
    """Spread-out click positions in percent (different prompts, same image)."""
    return [(15 + (37 * i) % 70, 20 + (53 * i) % 60) for i in range(count)]


# --------------------------------------------------------------------------- in-process


def bench_in_process(kind: str, photo: Path, clicks: int) -> dict[str, Any]:
    import cv2
    import numpy as np
    from label_studio_sdk.converter.brush import mask2rle

    from labelpilot.backends.embedding_cache import EmbeddingCache
    from labelpilot.backends.interactive import PointPrompt, Prompt
    from labelpilot.backends.model_ref import ModelLocator
    from labelpilot.backends.sam import SamInteractor, parse_sam_ref

    started = time.perf_counter()
    spec = parse_sam_ref(f"random:{kind}", ModelLocator(Path("models"), download=False))
    sam = SamInteractor.load(spec, device="cpu",
                             cache=EmbeddingCache(1 << 30, lambda e: e.nbytes))
    load_s = time.perf_counter() - started
    image = cv2.imread(str(photo))
    height, width = image.shape[:2]
    started = time.perf_counter()
    embedding = sam.encode(image)
    encode_ms = 1000 * (time.perf_counter() - started)
    decoder_ms, with_rle_ms, rle_ints = [], [], []
    for x, y in [(50.0, 50.0), *click_points(clicks)]:
        prompt = Prompt(points=(PointPrompt(x * width / 100, y * height / 100),))
        started = time.perf_counter()
        result = sam.decode(embedding, prompt)
        decoded = time.perf_counter()
        rle = mask2rle(result.mask.astype(np.uint8) * 255)
        decoder_ms.append(1000 * (decoded - started))
        with_rle_ms.append(1000 * (time.perf_counter() - started))
        rle_ints.append(len(rle))
    blob = np.zeros((height, width), np.uint8)
    cv2.circle(blob, (width // 2, height // 2), height // 4, 255, -1)
    return {"load_s": load_s, "encode_ms": encode_ms, "decoder": sam.decoder.name,
            "embedding_bytes": embedding.nbytes, "bare": stats(decoder_ms[1:]),
            "bare_rle": stats(with_rle_ms[1:]), "rle_ints_p50": percentile(rle_ints, 50),
            "object_mask_rle_ints": len(mask2rle(blob))}


# --------------------------------------------------------------------------- through HTTP


@contextmanager
def sam_backend(tmp: Path, kind: str, workers: int, redis_url: str
                ) -> Iterator[tuple[str, int]]:
    """The real gunicorn backend serving random:<kind>; yields (url, master pid)."""
    import requests

    from labelpilot.embedded_redis import free_port
    from labelpilot.serving import gunicorn_command

    port = free_port()
    prom = tmp / f"prometheus-{kind}"
    prom.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update({"PROMETHEUS_MULTIPROC_DIR": str(prom), "MODEL_DIR": str(tmp / "models"),
                "PYTHONPATH": str(REPO), "REDIS_URL": redis_url,
                "LABELPILOT_SAM_MODEL": f"random:{kind}", "LABELPILOT_ALLOWED_HOSTS": "127.0.0.1",
                "LABELPILOT_PRELOAD": ""})
    log = tmp / f"backend-{kind}.log"
    with open(log, "ab") as out:
        process = subprocess_popen(gunicorn_command("127.0.0.1", port, workers), env, out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"backend not healthy:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        yield url, process.pid
    finally:
        stop_processes([process])


def subprocess_popen(command: list[str], env: dict[str, str], out: Any) -> Any:
    import subprocess

    return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)


class Clicker:
    """A Label Studio stand-in for one SAM project."""

    def __init__(self, url: str, image_base: str, fresh_connections: bool = False):
        import requests

        self.fresh_connections = fresh_connections
        self.url = url
        self.image_base = image_base
        self.config = LABEL_CONFIG.read_text()
        self.session = requests.Session()
        self.server_ms: list[float] = []

    def task(self, photo: Path) -> dict[str, Any]:
        return {"id": abs(hash(photo.name)) % 10**6,
                "data": {"image": f"{self.image_base}/{photo.name}"}}

    def click(self, photo: Path, x: float, y: float) -> tuple[float, str]:
        """(ms, embedding source) of one smart-keypoint click; also records the server's own
        SAM time (embedding lookup + decoder) in `server_ms`."""
        body = {"tasks": [self.task(photo)], "project": "1.0", "label_config": self.config,
                "params": {"context": {"result": [{
                    "type": "keypointlabels", "from_name": "point", "to_name": "image",
                    "is_positive": True,
                    "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": ["Object"]}}]}}}
        if self.fresh_connections:
            self.session.close()  # a new connection: any worker may take it, as from LS
        started = time.perf_counter()
        response = self.session.post(f"{self.url}/predict", json=body, timeout=300)
        elapsed = 1000 * (time.perf_counter() - started)
        if response.status_code == 422 and "empty mask" in response.text:
            return elapsed, str(response.json().get("embedding"))  # random weights: allowed
        if response.status_code != 200:
            raise RuntimeError(f"click answered {response.status_code}: {response.text[:300]}")
        self.server_ms.append(1000 * float(response.headers["X-Labelpilot-Sam-Seconds"]))
        return elapsed, response.headers["X-Labelpilot-Sam-Embedding"]

    def batch(self, photos: Sequence[Path]) -> None:
        body = {"tasks": [self.task(p) for p in photos], "project": "1.0",
                "label_config": self.config, "params": {"context": None}}
        self.session.post(f"{self.url}/predict", json=body, timeout=60).raise_for_status()


def stored(client: Any, kind: str) -> set[bytes]:
    """Embedding keys of this model in the Redis tier (not the in-progress markers)."""
    return {k for k in client.scan_iter(f"labelpilot:sam:emb:sam-{kind}-random:*")
            if not k.endswith(b":encoding")}


def wait_for(predicate: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("prewarm did not finish")
        time.sleep(0.05)
    return time.monotonic() - started


def bench_http(kind: str, photos: list[Path], clicks: int, misses: int, workers: int,
               redis_url: str, tmp: Path) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"labelpilot:sam:emb:sam-{kind}-random:*"):
        client.delete(key)
    hit_photo, miss_photos = photos[0], photos[1 : 1 + misses]
    warm_photos = photos[1 + misses : 1 + 2 * misses]
    with ExitStack() as stack:
        image_base = stack.enter_context(serve_directory(photos[0].parent))
        started = time.monotonic()
        url, master = stack.enter_context(sam_backend(tmp, kind, workers, redis_url))
        clicker = Clicker(url, image_base, fresh_connections=workers > 1)
        stack.callback(clicker.session.close)
        first_ms, _ = clicker.click(hit_photo, 50, 50)  # loads the model and encodes
        startup_s = time.monotonic() - started
        pids = child_pids(master)
        anon_before = sum(proc_status_mb(p, "RssAnon") for p in pids)
        for _ in range(3 * workers):  # every worker gets the embedding (memory or Redis)
            clicker.click(hit_photo, 40, 40)
        hits = []
        clicker.server_ms.clear()
        for x, y in click_points(clicks):
            ms, source = clicker.click(hit_photo, x, y)
            hits.append(ms)
            if source not in ("memory", "redis"):
                raise RuntimeError(f"expected a cache hit, got {source}")
        hit_server = list(clicker.server_ms)
        miss = []
        for photo in miss_photos:
            ms, source = clicker.click(photo, 50, 50)
            miss.append(ms)
            if source != "encoded":
                raise RuntimeError(f"expected a miss, got {source}")
        anon_after = sum(proc_status_mb(p, "RssAnon") for p in child_pids(master))
        prewarmed, ready_s, prewarmed_sources = [], [], []
        for photo in warm_photos:
            clicker.batch([photo])
            before = stored(client, kind)
            ready_s.append(wait_for(lambda b=before: len(stored(client, kind) - b) >= 1, 300))
            ms, source = clicker.click(photo, 50, 50)
            prewarmed.append(ms)
            prewarmed_sources.append(source)
    return {"first_click_ms": first_ms, "startup_s": startup_s, "hit": stats(hits),
            "hit_server": stats(hit_server) if hit_server else None,
            "miss": stats(miss), "prewarmed": stats(prewarmed),
            "prewarm_ready_s": ready_s, "prewarmed_sources": prewarmed_sources,
            "workers": workers,
            "anon_rss_growth_mb_per_image": (anon_after - anon_before) / max(1, len(miss_photos))}


# --------------------------------------------------------------------------- report


def pair(sample: dict[str, float]) -> str:
    return f"{sample['p50_ms']:.0f} / {sample['p95_ms']:.0f}"


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = (f"{s['clicks']} hit clicks, {s['misses']} misses, {s['misses']} prewarmed tasks per "
            f"model; {s['workers']} gunicorn worker(s); photos {s['photo_size']}; "
            f"OMP_NUM_THREADS={s['omp_threads']}, {s['cpus']} CPUs, load avg "
            f"{s['load_before']:.2f} -> {s['load_after']:.2f}\n")
    rows = [("model", "decoder", "(a) bare decoder", "(a') decoder + RLE",
             "(b) hit via HTTP", "(b)/(a)", "(c) miss", "(d) prewarmed 1st click",
             "encoder alone", "cache per image")]
    for kind, r in report["models"].items():
        a, a2, b, c, d = r["bare"], r["bare_rle"], r["hit"], r["miss"], r["prewarmed"]
        rows.append((
            kind, r["decoder"], pair(a), pair(a2), pair(b), f"{b['p50_ms'] / a['p50_ms']:.1f}x",
            pair(c), pair(d), f"{r['encode_ms']:.0f} ms",
            f"{r['embedding_bytes'] / 2**20:.1f} MiB (+{r['anon_rss_growth_mb_per_image']:.0f}"
            " MB RSS)"))
    notes = "\n".join(
        f"{kind}: load {r['load_s']:.1f}s in-process; backend start to first answered click "
        f"{r['startup_s']:.1f}s; prewarm ready {min(r['prewarm_ready_s']):.1f}-"
        f"{max(r['prewarm_ready_s']):.1f}s after the batch /predict (1st click's embedding "
        f"from: {', '.join(r['prewarmed_sources'])}); server-side SAM time of a "
        f"hit (embedding lookup + decoder) p50 {r['hit_server']['p50_ms']:.0f} ms; mask RLE "
        f"p50 {r['rle_ints_p50']:.0f} ints (random weights give striped masks; an object-like "
        f"disk of the same image size: {r['object_mask_rle_ints']} ints)"
        for kind, r in report["models"].items())
    notes += ("\nlatencies: p50 / p95 in ms. cache per image: the embedding's bytes, and the "
              "worker's private RSS growth per missed image (includes allocator retention)")
    return "\n".join([head, table(rows), "", notes])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.sam_click", __doc__)
    parser.add_argument("--models", default="mobile_sam,vit_b",
                        help="comma list of mobile_sam, vit_b, vit_l, vit_h (mobile_sam,vit_b)")
    parser.add_argument("--clicks", type=int, default=20, help="hit clicks per model (20)")
    parser.add_argument("--misses", type=int, default=3,
                        help="miss clicks and prewarmed tasks per model (3)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (1)")
    return parser.parse_args(argv)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    settings = {"clicks": args.clicks, "misses": args.misses, "workers": args.workers,
                "omp_threads": int(os.environ["OMP_NUM_THREADS"]), "cpus": os.cpu_count(),
                "load_before": os.getloadavg()[0], "redis": redis_url}
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sam-") as name:
        tmp = Path(name)
        photo_dir = tmp / "photos"
        photo_dir.mkdir()
        photos = make_photos(photo_dir, 1 + 2 * args.misses)
        import cv2

        height, width = cv2.imread(str(photos[0])).shape[:2]
        settings["photo_size"] = f"{width}x{height}"
        for kind in kinds:
            progress(f"{kind}: in-process encoder and bare decoder...")
            models[kind] = bench_in_process(kind, photos[0], args.clicks)
            progress(f"{kind}: gunicorn backend, hit / miss / prewarmed clicks...")
            models[kind].update(bench_http(kind, photos, args.clicks, args.misses,
                                           args.workers, redis_url, tmp))
    settings["load_after"] = os.getloadavg()[0]
    return {"settings": settings, "models": models}


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(parse_args(argv), run_bench, render)


if __name__ == "__main__":
    sys.exit(main())
