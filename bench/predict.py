"""labelpilot `/predict` end to end against the raw ultralytics model, in one run.

    .venv/bin/python -m bench.predict [--images 48] [--size 320] [--batch 8] [--workers 1]
                                      [--repeat 3] [--model PATH] [--json out.json]
                                      [--runtimes torch,onnx,openvino]

On the same generated PNG images it measures:

1. raw ultralytics in this process: batched `predict(list_of_paths, batch=N)` and a
   one-image-at-a-time loop; the faster of the two is the "raw" reference;
2. the real gunicorn backend: sequential `POST /predict` requests of N tasks whose images are
   served over HTTP from 127.0.0.1 (fetch + decode + model + JSON, as Label Studio sees it);
   raw and labelpilot passes alternate, so a load change on the machine hits both alike;
3. startup: gunicorn launch to the first `/predict` answer vs a fresh python process that
   imports ultralytics, loads the model and predicts one image;
4. peak RSS (VmHWM) of each gunicorn worker vs a raw subprocess that ran the same images;
5. the served runtimes (LABELPILOT_RUNTIME): the weights become a store version exported to
   ONNX and OpenVINO (`models export`, parity on generated labelled images), and one gunicorn
   per runtime serves that version, timed in the same interleaved rounds; per runtime the
   throughput, p50/p95, detections, startup and the worker's VmHWM against raw PyTorch.

With --watch it also measures what the watch path (quality checks, drift; LABELPILOT_WATCH)
adds to /predict: a second gunicorn with LABELPILOT_WATCH=false, both asked with new task ids
on every call (an observer checks a task once per process, so repeated ids would hide the
cost), interleaved; and, in this process, the quality observer alone on the decoded images
(check + Redis ledger), per image. Both are set against the model's own time per image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    OMP_THREADS,
    REPO,
    Backend,
    Client,
    bench_parser,
    chunks,
    configure_offline,
    default_model,
    gunicorn_backend,
    make_images,
    median,
    percentile,
    proc_status_mb,
    progress,
    report_run,
    serve_directory,
    table,
)

CONF = 0.25
THROUGHPUT_TARGET = 0.95
STARTUP_TARGET = 1.2
RSS_TARGET_MB = 900.0
LABELPILOT = "labelpilot /predict"
RUNTIMES = ("torch", "onnx", "openvino")  # LABELPILOT_RUNTIME of the served rows
RUNTIME_TARGET = 1.5  # the best CPU runtime against raw ultralytics PyTorch
EXPORTED_RSS_TARGET_MB = 500.0  # a worker serving an export (no torch)
WATCH_ON = "labelpilot /predict, watch on (new ids)"
WATCH_OFF = "labelpilot /predict, watch off (new ids)"


def runtime_row(runtime: str) -> str:
    """The series name of the gunicorn serving on `runtime` (torch: the main row)."""
    return LABELPILOT if runtime == "torch" else f"{LABELPILOT} ({runtime})"


SERVED = (LABELPILOT, WATCH_ON, WATCH_OFF, *(runtime_row(r) for r in RUNTIMES))
WATCH_TARGET = 0.03  # the watch path may add this share of the model's time per image

Run = Callable[[list[Any]], int]  # one call (paths or task ids) -> detections found


# --------------------------------------------------------------------------- helpers




















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


class FreshIds(Client):
    """/predict with new task ids on every call (the same images): the watch path sees each
    image as a task it has not checked yet, the worst case for its cost."""

    def __init__(self, backend: Any, image_base: str, first_id: int):
        super().__init__(backend, image_base)
        self.next_id = first_id

    def body(self, ids: Sequence[int]) -> dict[str, Any]:
        tasks = [{"id": self.next_id + k, "data": {"image": f"{self.image_base}/{i}.png"}}
                 for k, i in enumerate(ids)]
        self.next_id += len(ids)
        return {"tasks": tasks, "label_config": self.config, "project": "1.0"}


def quality_observer_ms(paths: list[str], repeat: int = 3) -> float:
    """ms per image of the quality observer (check + Redis ledger) on the decoded images."""
    import cv2
    import redis

    from labelpilot.backends.observation import Observation
    from labelpilot.backends.quality import QualityThresholds
    from labelpilot.backends.quality_ledger import QualityLedger, QualityObserver

    connection = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ledger = QualityLedger(connection)
    ledger.forget("bench-quality")
    observer = QualityObserver(ledger, lambda _: QualityThresholds())
    images = [cv2.imread(p) for p in paths]
    seconds, count = 0.0, 0
    for round_ in range(repeat):
        batch = [Observation("bench-quality", None, "bench", f"{round_}-{i}", image, 3, None,
                             (0.9,)) for i, image in enumerate(images)]
        for call in chunks(batch, 8):
            t0 = time.perf_counter()
            observer.observe(call)
            seconds += time.perf_counter() - t0
            count += len(call)
    ledger.forget("bench-quality")
    return 1000 * seconds / count








def exported_version(tmp: Path, model_path: Path, size: int, runtimes: Sequence[str]) -> Path:
    """The model as a store version under tmp/models with its exports (`models export`, parity
    on generated labelled images): the weights path every served row uses, so all runtimes serve
    the same weights (and `torch` the same bytes as the raw rows)."""
    import redis

    from labelpilot.backends.model_store import ModelStore
    from labelpilot.synthetic import write_detection_dataset
    from labelpilot.trainers.export import ExportRequest, export_version

    connection = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    store = ModelStore(tmp / "models" / "store", connection)
    version = store.write_version("bench-predict", model_path, {"task": "detect"})
    data = write_detection_dataset(tmp / "holdout", 2, 24, size=size, seed=1)
    for fmt in (r for r in runtimes if r != "torch"):
        progress(f"exporting to {fmt} (parity on 24 generated images)...")
        record = export_version(store, ExportRequest(version.key, version.version, fmt,
                                                     data=data))
        parity = record.info["parity"]
        progress(f"  mAP50-95 {parity[fmt]['map50_95']:.4f} vs torch "
                 f"{parity['torch']['map50_95']:.4f}")
    return version.weights


@contextmanager
def runtime_backend(tmp: Path, weights: Path, workers: int, runtime: str) -> Iterator[Backend]:
    """`gunicorn_backend` with LABELPILOT_RUNTIME=`runtime`, on the shared tmp/models."""
    own = tmp / f"serve-{runtime}"
    own.mkdir()
    (own / "models").symlink_to(tmp / "models")
    previous = os.environ.get("LABELPILOT_RUNTIME")
    os.environ["LABELPILOT_RUNTIME"] = runtime
    try:
        backend_cm = gunicorn_backend(own, weights, workers)
        backend = backend_cm.__enter__()
    finally:
        if previous is None:
            del os.environ["LABELPILOT_RUNTIME"]
        else:
            os.environ["LABELPILOT_RUNTIME"] = previous
    try:
        yield backend
    finally:
        backend_cm.__exit__(None, None, None)


# --------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def metric_row(label: str, raw: float, lp: float, fmt: str, target: str) -> tuple[str, ...]:
    return (label, format(raw, fmt), format(lp, fmt), ratio(lp, raw), target)




@dataclass
class Results:
    settings: dict[str, Any]
    series: list[Series]
    child: dict[str, float]
    startup: dict[str, float]
    workers_mb: dict[int, dict[str, float]]
    quality_ms: float | None = None  # the quality observer alone, in-process (--watch)
    runtimes: dict[str, dict[str, float]] = field(default_factory=dict)  # startup, VmHWM

    def runtime_rows(self, raw: Series) -> list[dict[str, Any]]:
        """Per LABELPILOT_RUNTIME: throughput, p50/p95, detections, startup and the worker's
        peak RSS, with ratios against raw ultralytics PyTorch."""
        rows = []
        for runtime, extra in self.runtimes.items():
            found = [s for s in self.series if s.name == runtime_row(runtime)]
            if not found:
                continue
            summary = found[0].summary()
            rows.append({**summary, "runtime": runtime, **extra,
                         "throughput_ratio": summary["images_per_s"] / raw.images_per_s,
                         "p95_ratio": summary["p95_ms"] / percentile(raw.latency_ms, 95),
                         "startup_ratio": extra["startup_s"] / self.child["startup_s"],
                         "detections_vs_raw": summary["detections"] / max(
                             raw.passes[-1].detections, 1) - 1})
        return rows

    def report(self) -> dict[str, Any]:
        raw_modes = [s for s in self.series if s.name not in SERVED]
        raw = max(raw_modes, key=lambda s: s.images_per_s)
        (served,) = [s for s in self.series if s.name == LABELPILOT]
        rss = max((w["peak_rss"] for w in self.workers_mb.values()), default=0.0)
        anon = max((w["anon_rss"] for w in self.workers_mb.values()), default=0.0)
        watched = {s.name: s for s in self.series if s.name in (WATCH_ON, WATCH_OFF)}
        watch: dict[str, Any] = {}
        if len(watched) == 2:
            model_ms = 1000 / raw.images_per_s
            on_ms = 1000 / watched[WATCH_ON].images_per_s
            off_ms = 1000 / watched[WATCH_OFF].images_per_s
            watch = {"model_ms_per_image": model_ms, "predict_on_ms_per_image": on_ms,
                     "predict_off_ms_per_image": off_ms, "added_ms_per_image": on_ms - off_ms,
                     "added_share_of_model": (on_ms - off_ms) / model_ms,
                     "quality_observer_ms_per_image": self.quality_ms,
                     "quality_share_of_model": (self.quality_ms or 0.0) / model_ms,
                     "target_share": WATCH_TARGET}
        return {
            "settings": self.settings,
            **({"watch": watch} if watch else {}),
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
            "runtimes": self.runtime_rows(raw),
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
    if "watch" in report:
        w = report["watch"]
        notes += (
            f"\nwatch path (quality, drift): /predict {w['predict_on_ms_per_image']:.2f} ms/img "
            f"on vs {w['predict_off_ms_per_image']:.2f} off = {w['added_ms_per_image']:+.2f} ms "
            f"({w['added_share_of_model']:+.1%} of the model's {w['model_ms_per_image']:.2f} "
            f"ms/img; target <= {w['target_share']:.0%}); the quality observer alone: "
            f"{w['quality_observer_ms_per_image']:.2f} ms/img "
            f"({w['quality_share_of_model']:.1%} of the model's time)"
        )
    runtimes = [("served on", "img/s", "vs raw", "p50 ms/img", "p95 ms/img", "p95 vs raw",
                 "detections", "startup s", "vs raw", "worker VmHWM MB")]
    runtimes.append(("raw ultralytics PyTorch", f"{raw['images_per_s']:.1f}", "1.00x",
                     f"{raw['p50_ms']:.1f}", f"{raw['p95_ms']:.1f}", "1.00x",
                     str(raw["detections"]), f"{raw['startup_s']:.2f}", "1.00x",
                     f"{raw['peak_rss_mb']:.0f}"))
    for r in report.get("runtimes", []):
        runtimes.append((f"labelpilot {r['runtime']}", f"{r['images_per_s']:.1f}",
                         f"{r['throughput_ratio']:.2f}x", f"{r['p50_ms']:.1f}",
                         f"{r['p95_ms']:.1f}", f"{r['p95_ratio']:.2f}x", str(r["detections"]),
                         f"{r['startup_s']:.2f}", f"{r['startup_ratio']:.2f}x",
                         f"{r['peak_rss_mb']:.0f}"))
    targets = (f"targets: best CPU runtime >= {RUNTIME_TARGET}x raw throughput with detections "
               f"within 1 %; torch >= {THROUGHPUT_TARGET}x and startup <= {STARTUP_TARGET}x; "
               f"an exported runtime's worker VmHWM <= {EXPORTED_RSS_TARGET_MB:.0f} MB")
    return "\n".join([head, table(modes), "", table(rows), "", notes, "", table(runtimes),
                      targets])


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.predict", __doc__)
    parser.add_argument("--images", type=int, default=48, help="images to predict (48)")
    parser.add_argument("--size", type=int, default=320, help="image side in px (320)")
    parser.add_argument("--model", type=Path, help="weights (default: the cached shapes model)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (1)")
    parser.add_argument("--batch", type=int, default=8, help="tasks per /predict request (8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the images (3)")
    parser.add_argument("--watch", action="store_true",
                        help="also time /predict with the watch path off vs on")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES),
                        help="LABELPILOT_RUNTIME values served, comma-separated "
                        "(torch,onnx,openvino)")
    parser.add_argument("--raw-child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)




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
        runtimes = [r for r in RUNTIMES if r in args.runtimes.split(",")]
        weights = exported_version(tmp, model_path, args.size, runtimes)
        image_base = stack.enter_context(serve_directory(image_dir))
        served: dict[str, tuple[Backend, Client]] = {}
        startups: dict[str, dict[str, float]] = {}
        for runtime in ("torch", *(r for r in runtimes if r != "torch")):
            progress(f"starting gunicorn, LABELPILOT_RUNTIME={runtime} (startup to first "
                     "/predict)...")
            backend = stack.enter_context(runtime_backend(tmp, weights, args.workers, runtime))
            client = Client(backend, image_base)
            stack.callback(client.session.close)
            startups[runtime] = client.startup()
            client.setup()
            client.warm_up(list(range(min(args.batch, args.images))), args.workers)
            served[runtime] = (backend, client)
        backend, client = served["torch"]
        startup = startups["torch"]
        watching: dict[str, tuple[list[list[Any]], Run]] = {}
        if args.watch:
            progress("starting a second gunicorn with LABELPILOT_WATCH=false...")
            os.environ["LABELPILOT_WATCH"] = "false"
            try:
                off = stack.enter_context(gunicorn_backend(tmp / "off", model_path,
                                                           args.workers))
            finally:
                del os.environ["LABELPILOT_WATCH"]
            on_client = FreshIds(backend, image_base, 1_000_000)
            off_client = FreshIds(off, image_base, 1_000_000)
            stack.callback(on_client.session.close)
            stack.callback(off_client.session.close)
            off_client.wait_healthy()
            off_client.setup()
            off_client.warm_up(list(range(min(args.batch, args.images))), args.workers)
            watching = {WATCH_ON: (chunks(range(args.images), args.batch), on_client.run),
                        WATCH_OFF: (chunks(range(args.images), args.batch), off_client.run)}
        for warm in (paths[: args.batch], paths[:1], paths[:1]):
            raw.run(warm)
        progress(f"timing {args.repeat} interleaved rounds of raw batched, raw loop, /predict...")
        contenders: dict[str, tuple[list[list[Any]], Run]] = {
            f"batched (list of {args.batch} paths)": (chunks(paths, args.batch), raw.run),
            "loop (one path per call)": (chunks(paths, 1), raw.run),
            **{runtime_row(r): (chunks(range(args.images), args.batch), c.run)
               for r, (_, c) in served.items() if r in runtimes},
            **watching,
        }
        series = interleaved(contenders, args.repeat)
        workers_mb = backend.worker_memory_mb()
        runtime_mb = {r: max((w["peak_rss"] for w in b.worker_memory_mb().values()), default=0.0)
                      for r, (b, _) in served.items()}
        quality_ms = quality_observer_ms(paths) if args.watch else None
    settings["load_after"] = os.getloadavg()[0]
    return Results(settings, series, child, startup, workers_mb, quality_ms,
                   {r: {**startups[r], "peak_rss_mb": runtime_mb[r]} for r in served})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_offline()
    if args.raw_child:
        raw_child(args.raw_child, args.model, args.batch)
        return 0
    model_path = (args.model or default_model()).resolve()
    return report_run(lambda: run_bench(args, model_path).report(), render, args.json)




if __name__ == "__main__":
    sys.exit(main())
