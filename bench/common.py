"""What every bench shares: offline setup, generated images, the real gunicorn backend, a
Label Studio stand-in client, /proc memory readings, tables and the run/print/save tail."""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from labelpilot.processes import stop_processes

REPO = Path(__file__).resolve().parent.parent
OMP_THREADS = "2"
LABEL_CONFIG = REPO / "label_config" / "detection_shapes.xml"


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
    from labelpilot.backends.offline import configure_ultralytics

    configure_ultralytics(REPO / ".ultralytics")


def default_model() -> Path:
    from labelpilot.shapes_model import ensure_shapes_model

    return ensure_shapes_model(REPO / ".cache" / "models")


def make_images(directory: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    import cv2

    from labelpilot.synthetic import make_image

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

    class Server(ThreadingHTTPServer):
        # the default listen backlog (5) overflows when labelpilot fetches a request's 8
        # images at once: the dropped SYNs are retried after 1 s, a tail no real image
        # server (Label Studio, nginx: backlog 128+) has
        request_queue_size = 128

    handler = functools.partial(Quiet, directory=str(directory))
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def bench_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the option every bench has: --json."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    return parser


def bench_main(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """Offline setup, then `report_run` of `run(args)`."""
    configure_offline()
    return report_run(lambda: run(args), render, args.json)
