"""Start the pieces of `labelpilot serve`: Redis (embedded if needed), an RQ worker, gunicorn."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from labelpilot.embedded_redis import EmbeddedRedis

log = logging.getLogger(__name__)
QUEUES = ("labelpilot",)


def data_dir() -> Path:
    return Path(os.environ.get("LABELPILOT_DATA_DIR", ".data")).resolve()


def ensure_redis(stack: ExitStack) -> str:
    """REDIS_URL if set, else an embedded redis-server under the data dir (stopped on exit)."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    server = EmbeddedRedis(data_dir() / "redis")
    url = server.start()
    stack.callback(server.stop)
    os.environ["REDIS_URL"] = url
    log.info("REDIS_URL unset: started embedded redis at %s", url)
    return url


def gunicorn_command(host: str, port: int, workers: int) -> list[str]:
    conf = Path(__file__).with_name("gunicorn_conf.py")
    return [sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", str(workers),
            "-b", f"{host}:{port}", "adapters.label_studio.wsgi:app"]


def serving_env(workers_threads: int) -> dict[str, str]:
    env = dict(os.environ)
    prom = data_dir() / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    env["LABELPILOT_THREADS"] = str(workers_threads)
    return env


def run_serve(host: str, port: int, workers: int, threads: int, with_worker: bool) -> int:
    """Run until interrupted; returns gunicorn's exit code."""
    with ExitStack() as stack:
        ensure_redis(stack)
        env = serving_env(threads)
        children: list[subprocess.Popen[bytes]] = []
        if with_worker:
            children.append(subprocess.Popen([sys.executable, "-m", "labelpilot", "worker"],
                                             env=env))
        server = subprocess.Popen(gunicorn_command(host, port, workers), env=env)
        children.append(server)
        log.info("labelpilot serving on http://%s:%d (%d workers)", host, port, workers)

        def _stop(*_: object) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, _stop)
        try:
            code = server.wait()
        except KeyboardInterrupt:
            _stop()
            code = server.wait()
        _stop()
        for child in children:
            child.wait(timeout=30)
        return code


def run_worker(queues: tuple[str, ...] = QUEUES) -> None:
    from rq import Worker

    from labelpilot.redis_conn import get_redis

    Worker(list(queues), connection=get_redis()).work(with_scheduler=False)
