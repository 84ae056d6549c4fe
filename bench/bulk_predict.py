"""Bulk prediction of a whole Label Studio project against `/predict`, in one run.

    .venv/bin/python -m bench.bulk_predict [--tasks 1000] [--size 160] [--batch 16]
                                           [--workers 1] [--chunk 128] [--model PATH]
                                           [--watch] [--json out.json]

A real Label Studio 1.23.2 holds a project of `--tasks` tasks whose generated PNG images LS
serves as local files (labelpilot reads them from disk, LOCAL_FILES_DOCUMENT_ROOT). On the same
tasks, images and model it measures:

1. `/predict`: the real gunicorn backend (`--workers` processes) asked by `--workers` parallel
   clients with `--batch` tasks per request, as LS's "Retrieve predictions" asks it; the model
   is loaded first (a warm-up request), the answers are not stored; measured before and after
   the bulk run, the faster pass is the reference (the machine's load changes);
2. `labelpilot predict --ls-project` as an RQ run over `--workers` real RQ workers (one shard
   each), from the command to the run's end: listing the tasks page by page, predicting in
   chunks and writing every prediction to LS in bulk (POST /api/projects/{id}/import/predictions);
   the horses import ultralytics and load the model inside the timing (once per shard);
3. raw ultralytics in this process, batched `predict(paths, batch=N)`, as the reference.

The target is bulk ≥ 0.9× /predict's tasks/s (the bulk run also lists and writes to LS).
Both servers see the same LABELPILOT_WATCH (off unless --watch).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    bench_main,
    bench_parser,
    chunks,
    default_model,
    make_images,
    progress,
    table,
)


def _env(ls: Any, model: Path, tmp: Path, watch: bool) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MODEL_DIR": str(tmp / "models"),
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
            "LOCAL_FILES_DOCUMENT_ROOT": str(ls.files_root),
            "LABELPILOT_MODEL_DETECT": str(model), "LABELPILOT_WATCH": str(watch).lower(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def bench_predict_endpoint(env: dict[str, str], tmp: Path, tasks: list[dict[str, Any]],
                           config: str, pid: int, batch: int, workers: int) -> dict[str, float]:
    import requests

    from labelpilot.embedded_redis import free_port
    from labelpilot.processes import stop_processes
    from labelpilot.serving import gunicorn_command

    port = free_port()
    prom = tmp / "prometheus"
    prom.mkdir(parents=True, exist_ok=True)
    log = open(tmp / "backend.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(gunicorn_command("127.0.0.1", port, workers),
                               env={**env, "PROMETHEUS_MULTIPROC_DIR": str(prom)}, cwd=REPO,
                               stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()

    def ask(part: list[dict[str, Any]]) -> int:
        body = {"tasks": part, "label_config": config, "project": f"{pid}.0"}
        answer = session.post(f"{url}/predict", json=body, timeout=600)
        if answer.status_code != 200 or "errors" in answer.json():
            raise RuntimeError(f"/predict answered {answer.status_code}: {answer.text[:300]}")
        return len(answer.json()["results"])

    try:
        _wait(lambda: _healthy(session, url), 120, "the backend")
        with ThreadPoolExecutor(workers) as pool:  # every worker loads the model
            list(pool.map(ask, [tasks[:batch]] * (2 * workers)))
        parts = chunks(tasks, batch)
        began = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            answered = sum(pool.map(ask, parts))
        seconds = time.monotonic() - began
    finally:
        stop_processes([process])
        log.close()
    assert answered == len(tasks)
    return {"seconds": seconds, "tasks_per_s": len(tasks) / seconds}


def _healthy(session: Any, url: str) -> bool:
    import requests

    try:
        return bool(session.get(f"{url}/health", timeout=1).status_code == 200)
    except requests.RequestException:
        return False


def bench_bulk(env: dict[str, str], tmp: Path, pid: int, total: int, workers: int,
               chunk: int, admin: Any) -> dict[str, Any]:
    import redis
    from rq import Worker

    from labelpilot.processes import stop_processes
    from labelpilot.trainers.bulk_run import BulkRun

    connection = redis.Redis.from_url(env["REDIS_URL"])
    names = {f"bench-bulk-{os.getpid()}-{n}" for n in range(workers)}
    procs = [subprocess.Popen([sys.executable, "-m", "labelpilot", "worker", "--name", name],
                              env=env, cwd=REPO, stdout=open(tmp / f"{name}.log", "ab"),  # noqa: SIM115
                              stderr=subprocess.STDOUT) for name in sorted(names)]
    try:
        _wait(lambda: names <= {w.name for w in Worker.all(connection=connection)}, 120,
              "the RQ workers")
        began = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "labelpilot", "predict", "--ls-project",
                              str(pid), "--shards", str(workers), "--chunk-size", str(chunk)],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"labelpilot predict failed: {out.stderr}")
        run = BulkRun(connection, re.search(r"run (\S+),", out.stdout)[1])  # type: ignore[index]
        _wait(lambda: run.progress()["state"] in ("finished", "failed"), 1800, "the run", 0.05)
        seconds = time.monotonic() - began
    finally:
        stop_processes(procs)
    final = run.progress()
    if final["state"] != "finished" or final["done"] != total:
        raise RuntimeError(f"the run did not finish: {final}")
    written = len(admin.predictions(pid))
    return {"seconds": seconds, "tasks_per_s": total / seconds, "written": written,
            "run": final, "steady_seconds": final["seconds"],
            "steady_tasks_per_s": total / final["seconds"]}


def bench_raw(paths: list[Path], model: Path, batch: int) -> dict[str, float]:
    from ultralytics import YOLO

    yolo = YOLO(str(model))
    yolo.predict([str(p) for p in paths[:batch]], batch=batch, verbose=False)
    began = time.monotonic()
    for part in chunks([str(p) for p in paths], batch):
        yolo.predict(part, batch=batch, verbose=False)
    seconds = time.monotonic() - began
    return {"seconds": seconds, "tasks_per_s": len(paths) / seconds}


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from labelpilot.adapters.label_studio.client import LabelStudioClient
    from labelpilot.embedded_redis import free_port
    from labelpilot.label_studio_server import LabelStudioServer

    model = Path(args.model) if args.model else default_model()
    config = (REPO / "label_config" / "detection_shapes.xml").read_text()
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as name:
        tmp = Path(name)
        ls = LabelStudioServer(data_dir=tmp / "ls", port=free_port(),
                               template=REPO / ".cache" / "ls-template")
        progress("starting Label Studio")
        ls.start()
        try:
            admin = LabelStudioClient(ls.url, ls.token)
            pid = admin.create_project("bench bulk predict", config)
            folder = ls.files_root / f"bench{pid}"
            folder.mkdir(parents=True, exist_ok=True)
            paths = make_images(folder, args.tasks, args.size)
            ids = admin.import_tasks(pid, [{"image": f"/data/local-files/?d=bench{pid}/{p.name}"}
                                           for p in paths])
            tasks = [{"id": i, "data": {"image": f"/data/local-files/?d=bench{pid}/{p.name}"}}
                     for i, p in zip(ids, paths, strict=True)]
            env = _env(ls, model, tmp, args.watch)
            progress(f"/predict on {len(tasks)} tasks")
            endpoint = bench_predict_endpoint(env, tmp, tasks, config, pid, args.batch,
                                              args.workers)
            progress(f"labelpilot predict --ls-project {pid}")
            bulk = bench_bulk(env, tmp, pid, len(tasks), args.workers, args.chunk, admin)
            progress(f"/predict on {len(tasks)} tasks, again")
            again = bench_predict_endpoint(env, tmp, tasks, config, pid, args.batch,
                                           args.workers)
            progress("raw ultralytics")
            raw = bench_raw(paths, model, args.batch)
        finally:
            ls.stop()
    return {"tasks": args.tasks, "size": args.size, "batch": args.batch,
            "workers": args.workers, "chunk": args.chunk, "watch": args.watch,
            "raw": raw, "predict": max(endpoint, again, key=lambda e: e["tasks_per_s"]),
            "predict_passes": [endpoint, again], "bulk": bulk}


def render(report: dict[str, Any]) -> str:
    raw = report["raw"]["tasks_per_s"]
    endpoint = report["predict"]["tasks_per_s"]
    rows = [("path", "seconds", "tasks/s", "vs /predict", "vs raw", "target"),
            ("raw ultralytics (in process)", f"{report['raw']['seconds']:.2f}", f"{raw:.1f}",
             f"{raw / endpoint:.2f}x", "1.00x", ""),
            ("/predict (gunicorn, answers only; the faster of the passes before and after)",
             f"{report['predict']['seconds']:.2f}",
             f"{endpoint:.1f}", "1.00x", f"{endpoint / raw:.2f}x", ""),
            ("labelpilot predict (RQ, written to LS)", f"{report['bulk']['seconds']:.2f}",
             f"{report['bulk']['tasks_per_s']:.1f}",
             f"{report['bulk']['tasks_per_s'] / endpoint:.2f}x",
             f"{report['bulk']['tasks_per_s'] / raw:.2f}x", ">= 0.90x /predict"),
            ("  the same, from its first chunk on", f"{report['bulk']['steady_seconds']:.2f}",
             f"{report['bulk']['steady_tasks_per_s']:.1f}",
             f"{report['bulk']['steady_tasks_per_s'] / endpoint:.2f}x",
             f"{report['bulk']['steady_tasks_per_s'] / raw:.2f}x", "")]
    head = (f"{report['tasks']} tasks of {report['size']}x{report['size']} px, batch "
            f"{report['batch']}, {report['workers']} worker(s), chunks of {report['chunk']}, "
            f"LABELPILOT_WATCH={str(report['watch']).lower()}; "
            f"{report['bulk']['written']} predictions in LS after the run")
    return head + "\n" + table(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("bench.bulk_predict", __doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16, help="tasks per /predict request")
    parser.add_argument("--workers", type=int, default=1,
                        help="gunicorn workers and parallel clients; RQ workers and shards")
    parser.add_argument("--chunk", type=int, default=128, help="tasks per bulk chunk")
    parser.add_argument("--model", default="", help="weights (default: the shapes model)")
    parser.add_argument("--watch", action="store_true", help="LABELPILOT_WATCH=true for both")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(parse_args(argv), run_bench, render)


if __name__ == "__main__":
    raise SystemExit(main())
