"""labelpilot `/predict` end to end against the raw ultralytics model, in one run.

    .venv/bin/python -m bench.predict [--images 48] [--size 320] [--batch 8] [--workers 1]
                                      [--repeat 3] [--model PATH] [--json out.json]

On the same generated PNG images it measures:

1. raw ultralytics in this process: batched `predict(list_of_paths, batch=N)` and a
   one-image-at-a-time loop; the faster of the two is the "raw" reference;
2. the real gunicorn backend: sequential `POST /predict` requests of N tasks whose images are
   served over HTTP from 127.0.0.1 (fetch + decode + model + JSON, as Label Studio sees it);
   raw and labelpilot passes alternate, so a load change on the machine hits both alike;
3. startup: gunicorn launch to the first `/predict` answer vs a fresh python process that
   imports ultralytics, loads the model and predicts one image;
4. peak RSS (VmHWM) of each gunicorn worker vs a raw subprocess that ran the same images.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from labelpilot.processes import stop_processes

REPO = Path(__file__).resolve().parent.parent
OMP_THREADS = "2"
CONF = 0.25
LABEL_CONFIG = REPO / "label_config" / "detection_shapes.xml"
THROUGHPUT_TARGET = 0.95
STARTUP_TARGET = 1.2
RSS_TARGET_MB = 900.0
LABELPILOT = "labelpilot /predict"

Run = Callable[[list[Any]], int]  # one call (paths or task ids) -> detections found


# --------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def configure_offline() -> None:
    """Pin the thread count and keep ultralytics offline; call before importing it."""
    os.environ["OMP_NUM_THREADS"] = OMP_THREADS
    from backends.offline import configure_ultralytics

    configure_ultralytics(REPO / ".ultralytics")


def default_model() -> Path:
    from trainers.shapes_model import ensure_shapes_model

    return ensure_shapes_model(REPO / ".cache" / "models")


def make_images(directory: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    import cv2

    from trainers.synthetic import make_image

    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = directory / f"{i}.png"
        cv2.imwrite(str(path), make_image(rng, size=size).image)
        paths.append(path)
    return paths


def proc_status_mb(pid: int | str, key: str) -> float:
    """A kB field of /proc/<pid>/status in MB: VmHWM (peak RSS), RssAnon (private, now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def child_pids(parent: int) -> list[int]:
    """Direct children of a process, by scanning /proc/*/stat (field 4 is the ppid)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(stat.parent.name))
    return sorted(found)


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """A quiet ThreadingHTTPServer for the images; yields its base URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- timing


@dataclass
class Pass:
    """One timed pass over all images."""

    seconds: float
    images: int
    latency_ms: list[float]  # per image: call time / images in the call
    detections: int


@dataclass
class Series:
    """All passes of one contender; throughput is the median over passes."""

    name: str
    passes: list[Pass] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return median([p.images / p.seconds for p in self.passes])

    @property
    def latency_ms(self) -> list[float]:
        return [ms for p in self.passes for ms in p.latency_ms]

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.name,
            "images_per_s": self.images_per_s,
            "p50_ms": median(self.latency_ms),
            "p95_ms": percentile(self.latency_ms, 95),
            "detections": self.passes[-1].detections,
        }


def timed_pass(calls: list[list[Any]], run: Run) -> Pass:
    latency, detections = [], 0
    started = time.perf_counter()
    for call in calls:
        t0 = time.perf_counter()
        detections += run(call)
        latency.append((time.perf_counter() - t0) * 1000 / len(call))
    return Pass(time.perf_counter() - started, sum(map(len, calls)), latency, detections)


def interleaved(contenders: dict[str, tuple[list[list[Any]], Run]], repeat: int) -> list[Series]:
    """`repeat` rounds; each round runs one pass of every contender in turn."""
    series = {name: Series(name) for name in contenders}
    for _ in range(repeat):
        for name, (calls, run) in contenders.items():
            series[name].passes.append(timed_pass(calls, run))
    return list(series.values())


# --------------------------------------------------------------------------- raw ultralytics


class RawModel:
    """The plain ultralytics API on image paths, as a user would call it."""

    def __init__(self, model_path: Path):
        from ultralytics import YOLO

        self.model = YOLO(str(model_path))

    def run(self, paths: list[str]) -> int:
        results: list[Any] = list(
            self.model.predict(paths, verbose=False, conf=CONF, batch=len(paths))
        )
        return sum(len(r.boxes) for r in results)


def raw_child(image_dir: Path, model_path: Path, batch: int) -> None:
    """Fresh-process startup and peak RSS: import, load, first prediction, then all images.

    Runs after `configure_offline()`, like the in-process measurement.
    """
    t_import = time.monotonic()
    from ultralytics import YOLO

    t_load = time.monotonic()
    model = YOLO(str(model_path))
    files = sorted(image_dir.glob("*.png"), key=lambda p: int(p.stem))
    t_predict = time.monotonic()
    model.predict(str(files[0]), verbose=False, conf=CONF)
    first = time.monotonic()
    for call in chunks([str(f) for f in files], batch):
        model.predict(call, verbose=False, conf=CONF, batch=len(call))
    report = {
        "first_prediction_at": first,
        "import_s": t_load - t_import,
        "load_s": t_predict - t_load,
        "predict_s": first - t_predict,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_rss_mb": proc_status_mb("self", "RssAnon"),
    }
    print(json.dumps(report))


def bench_raw_process(image_dir: Path, model_path: Path, batch: int) -> dict[str, float]:
    """Run `raw_child` in a fresh interpreter; startup_s counts from just before the spawn."""
    command = [sys.executable, "-m", "bench.predict", "--raw-child", str(image_dir)]
    command += ["--model", str(model_path), "--batch", str(batch)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"raw subprocess failed:\n{done.stderr[-3000:]}")
    report: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    report["startup_s"] = report.pop("first_prediction_at") - started
    return report


# --------------------------------------------------------------------------- labelpilot


@dataclass
class Backend:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    launched_at: float

    def stop(self) -> None:
        stop_processes([self.process])

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def worker_memory_mb(self) -> dict[int, dict[str, float]]:
        """Per gunicorn worker: peak RSS and private (anonymous) RSS now."""
        return {
            pid: {
                "peak_rss": proc_status_mb(pid, "VmHWM"),
                "anon_rss": proc_status_mb(pid, "RssAnon"),
            }
            for pid in child_pids(self.process.pid)
        }


@contextmanager
def gunicorn_backend(tmp: Path, model_path: Path, workers: int) -> Iterator[Backend]:
    """The real `labelpilot serve` gunicorn (as tests/conftest.py starts it); always stopped."""
    from labelpilot.embedded_redis import free_port
    from labelpilot.serving import gunicorn_command

    port = free_port()
    prom = tmp / "prometheus"
    prom.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update(
        {
            "PROMETHEUS_MULTIPROC_DIR": str(prom),
            "MODEL_DIR": str(tmp / "models"),
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": OMP_THREADS,
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "LABELPILOT_MODEL_DETECT": str(model_path),
            "LABELPILOT_ALLOWED_HOSTS": "127.0.0.1",
        }
    )
    log = tmp / "backend.log"
    command = gunicorn_command("127.0.0.1", port, workers)
    with open(log, "ab") as out:
        launched = time.monotonic()
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
    backend = Backend(f"http://127.0.0.1:{port}", process, log, launched)
    try:
        yield backend
    finally:
        backend.stop()


class Client:
    """A sequential Label Studio stand-in: POST /predict with tasks pointing at served images."""

    def __init__(self, backend: Backend, image_base: str):
        import requests

        self.backend = backend
        self.image_base = image_base
        self.config = LABEL_CONFIG.read_text()
        self.session = requests.Session()

    def body(self, ids: Sequence[int]) -> dict[str, Any]:
        tasks = [{"id": i, "data": {"image": f"{self.image_base}/{i}.png"}} for i in ids]
        return {"tasks": tasks, "label_config": self.config, "project": "1.0"}

    def run(self, ids: list[int]) -> int:
        """POST /predict; the number of regions returned. Raises on any error."""
        url = f"{self.backend.url}/predict"
        response = self.session.post(url, json=self.body(ids), timeout=300)
        if response.status_code != 200 or "errors" in response.json():
            raise RuntimeError(
                f"/predict answered {response.status_code}: {response.text[:500]}"
                f"\n--- backend log ---\n{self.backend.log_tail()}"
            )
        return sum(len(r["result"]) for r in response.json()["results"])

    def setup(self) -> None:
        body = {"project": "1.0", "schema": self.config}
        self.session.post(f"{self.backend.url}/setup", json=body, timeout=60).raise_for_status()

    def wait_healthy(self, timeout: float = 120) -> float:
        """Seconds from launch until /health answers 200."""
        import requests

        deadline = self.backend.launched_at + timeout
        while time.monotonic() < deadline:
            if self.backend.process.poll() is not None:
                raise RuntimeError(f"backend exited:\n{self.backend.log_tail()}")
            try:
                if self.session.get(f"{self.backend.url}/health", timeout=1).status_code == 200:
                    return time.monotonic() - self.backend.launched_at
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"backend not healthy after {timeout}s:\n{self.backend.log_tail()}")

    def startup(self) -> dict[str, float]:
        """Launch -> /health up, and launch -> first /predict answered (loads the model)."""
        health_s = self.wait_healthy()
        self.run([0])
        return {"health_s": health_s, "startup_s": time.monotonic() - self.backend.launched_at}

    def warm_up(self, ids: list[int], workers: int) -> None:
        """Concurrent requests, twice, so that every worker has likely loaded the model."""
        with ThreadPoolExecutor(workers) as pool:
            for _ in range(2):
                list(pool.map(lambda _: self.run(ids), range(workers)))


# --------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def metric_row(label: str, raw: float, lp: float, fmt: str, target: str) -> tuple[str, ...]:
    return (label, format(raw, fmt), format(lp, fmt), ratio(lp, raw), target)


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


@dataclass
class Results:
    settings: dict[str, Any]
    series: list[Series]
    child: dict[str, float]
    startup: dict[str, float]
    workers_mb: dict[int, dict[str, float]]

    def report(self) -> dict[str, Any]:
        raw_modes = [s for s in self.series if s.name != LABELPILOT]
        raw = max(raw_modes, key=lambda s: s.images_per_s)
        (served,) = [s for s in self.series if s.name == LABELPILOT]
        rss = max((w["peak_rss"] for w in self.workers_mb.values()), default=0.0)
        anon = max((w["anon_rss"] for w in self.workers_mb.values()), default=0.0)
        return {
            "settings": self.settings,
            "raw_modes": [s.summary() for s in raw_modes],
            "raw_reference": raw.name,
            "raw": {
                **raw.summary(),
                "startup_s": self.child["startup_s"],
                "peak_rss_mb": self.child["peak_rss_mb"],
                "anon_rss_mb": self.child["anon_rss_mb"],
                "subprocess": self.child,
            },
            "labelpilot": {
                **served.summary(),
                **self.startup,
                "workers_mb": {str(k): v for k, v in self.workers_mb.items()},
                "peak_rss_mb": rss,
                "anon_rss_mb": anon,
            },
            "ratios": {
                "throughput": served.images_per_s / raw.images_per_s,
                "startup": self.startup["startup_s"] / self.child["startup_s"],
                "rss": rss / self.child["peak_rss_mb"],
            },
        }


def render(report: dict[str, Any]) -> str:
    s, raw, lp = report["settings"], report["raw"], report["labelpilot"]
    head = (
        f"{s['images']} images {s['size']}px, batch {s['batch']}, {s['workers']} gunicorn "
        f"worker(s), repeat {s['repeat']}, OMP_NUM_THREADS={s['omp_threads']}, {s['cpus']} CPUs, "
        f"load avg {s['load_before']:.2f} -> {s['load_after']:.2f}\nmodel {s['model']}\n"
    )
    modes = [("raw mode", "img/s", "p50 ms/img", "p95 ms/img", "detections")]
    for m in report["raw_modes"]:
        numbers = (m["images_per_s"], m["p50_ms"], m["p95_ms"])
        modes.append((m["mode"], *(f"{x:.1f}" for x in numbers), str(m["detections"])))
    rows = [
        ("metric", "raw ultralytics", LABELPILOT, "ratio", "target"),
        metric_row(
            "throughput (img/s)",
            raw["images_per_s"],
            lp["images_per_s"],
            ".1f",
            f">= {THROUGHPUT_TARGET}x",
        ),
        metric_row("latency p50 (ms/img)", raw["p50_ms"], lp["p50_ms"], ".1f", "-"),
        metric_row("latency p95 (ms/img)", raw["p95_ms"], lp["p95_ms"], ".1f", "-"),
        metric_row(
            "startup to first pred (s)",
            raw["startup_s"],
            lp["startup_s"],
            ".2f",
            f"<= {STARTUP_TARGET}x",
        ),
        metric_row(
            "peak RSS per worker (MB)",
            raw["peak_rss_mb"],
            lp["peak_rss_mb"],
            ".0f",
            f"<= {RSS_TARGET_MB:.0f}",
        ),
        metric_row("anon RSS at end (MB)", raw["anon_rss_mb"], lp["anon_rss_mb"], ".0f", "-"),
        ("detections (sanity)", str(raw["detections"]), str(lp["detections"]), "-", "equal"),
    ]
    child = raw["subprocess"]
    workers = ", ".join(
        f"pid {pid} peak {w['peak_rss']:.0f} / anon {w['anon_rss']:.0f}"
        for pid, w in lp["workers_mb"].items()
    )
    notes = (
        f"raw reference = {report['raw_reference']}\n"
        f"raw startup: import {child['import_s']:.2f}s + load {child['load_s']:.2f}s + "
        f"first predict {child['predict_s']:.2f}s (+ interpreter start)\n"
        f"labelpilot startup: /health up after {lp['health_s']:.2f}s, first /predict "
        f"(loads the model) answered at {lp['startup_s']:.2f}s\n"
        f"gunicorn workers (MB): {workers}; anon RSS excludes shared library pages"
    )
    return "\n".join([head, table(modes), "", table(rows), "", notes])


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=48, help="images to predict (48)")
    parser.add_argument("--size", type=int, default=320, help="image side in px (320)")
    parser.add_argument("--model", type=Path, help="weights (default: the cached shapes model)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (1)")
    parser.add_argument("--batch", type=int, default=8, help="tasks per /predict request (8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the images (3)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--raw-child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_bench(args: argparse.Namespace, model_path: Path) -> Results:
    settings = {
        "images": args.images,
        "size": args.size,
        "batch": args.batch,
        "workers": args.workers,
        "repeat": args.repeat,
        "model": str(model_path),
        "omp_threads": int(OMP_THREADS),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-predict-")))
        image_dir = tmp / "images"
        image_dir.mkdir()
        paths = [str(p) for p in make_images(image_dir, args.images, args.size)]
        progress("loading the raw model in-process (also warms the page cache)...")
        raw = RawModel(model_path)
        progress("raw ultralytics in a fresh subprocess (startup, peak RSS)...")
        child = bench_raw_process(image_dir, model_path, args.batch)
        progress("starting gunicorn (startup to first /predict)...")
        image_base = stack.enter_context(serve_directory(image_dir))
        backend = stack.enter_context(gunicorn_backend(tmp, model_path, args.workers))
        client = Client(backend, image_base)
        stack.callback(client.session.close)
        startup = client.startup()
        client.setup()
        client.warm_up(list(range(min(args.batch, args.images))), args.workers)
        for warm in (paths[: args.batch], paths[:1], paths[:1]):
            raw.run(warm)
        progress(f"timing {args.repeat} interleaved rounds of raw batched, raw loop, /predict...")
        contenders: dict[str, tuple[list[list[Any]], Run]] = {
            f"batched (list of {args.batch} paths)": (chunks(paths, args.batch), raw.run),
            "loop (one path per call)": (chunks(paths, 1), raw.run),
            LABELPILOT: (chunks(range(args.images), args.batch), client.run),
        }
        series = interleaved(contenders, args.repeat)
        workers_mb = backend.worker_memory_mb()
    settings["load_after"] = os.getloadavg()[0]
    return Results(settings, series, child, startup, workers_mb)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_offline()
    if args.raw_child:
        raw_child(args.raw_child, args.model, args.batch)
        return 0
    model_path = (args.model or default_model()).resolve()
    return report_run(lambda: run_bench(args, model_path).report(), render, args.json)


def report_run(
    run: Callable[[], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    json_path: Path | None,
) -> int:
    """Shared tail of every bench: run, print the table, optionally save the JSON.

    SIGTERM unwinds like Ctrl-C, so the benches' finally blocks stop their servers.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    report = run()
    print(render(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
