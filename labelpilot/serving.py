"""Start the pieces of `labelpilot serve`: Redis (embedded if needed), an RQ worker, gunicorn."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

from labelpilot.embedded_redis import EmbeddedRedis
from labelpilot.processes import stop_processes
from labelpilot.settings import Settings

log = logging.getLogger(__name__)
QUEUES = ("labelpilot",)


def ensure_redis(stack: ExitStack, settings: Settings) -> Settings:
    """`settings` if REDIS_URL is set, else an embedded redis-server under the data dir
    (stopped on exit) and settings that point at it (also exported to child processes)."""
    if settings.redis_url:
        return settings
    server = EmbeddedRedis(settings.resolved_data_dir / "redis")
    url = server.start()
    stack.callback(server.stop)
    os.environ["REDIS_URL"] = url
    from labelpilot.redis_conn import get_redis

    get_redis.cache_clear()
    log.info("REDIS_URL unset: started embedded redis at %s", url)
    return settings.model_copy(update={"redis_url": url})


def gunicorn_command(host: str, port: int, workers: int, extra_ports: Sequence[int] = (), *,
                     timeout: int = 120, app: str = "labelpilot.asgi:app") -> list[str]:
    """`extra_ports`: the same app on more ports (CVAT's facade port, direct-mode ports).
    uvicorn workers (see labelpilot.asgi), whose WSGI thread pools the app sizes itself from
    its settings (THREADS)."""
    conf = Path(__file__).with_name("gunicorn_conf.py")
    binds = [arg for p in (port, *extra_ports) for arg in ("-b", f"{host}:{p}")]
    return [sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", str(workers),
            "-k", "uvicorn_worker.UvicornWorker", "--timeout", str(timeout), *binds, app]


def _serving_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    prom = settings.resolved_data_dir / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    return env


@contextmanager
def backend_processes(settings: Settings, *, with_worker: bool = True,
                      extra_env: dict[str, str] | None = None,
                      extra_ports: Sequence[int] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """gunicorn (and an RQ worker) running until the block ends; yields the gunicorn process."""
    env = _serving_env(settings, extra_env or {})
    children: list[subprocess.Popen[bytes]] = []
    try:
        if with_worker:
            children.append(subprocess.Popen([sys.executable, "-m", "labelpilot", "worker"],
                                             env=env))
        server = subprocess.Popen(gunicorn_command(
            settings.host, settings.port, settings.workers, extra_ports,
            timeout=settings.timeout), env={**env, **settings.env_of(["threads"])})
        children.append(server)
        yield server
    finally:
        stop_processes(children, grace=30)


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the backend exited with code {process.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the backend at {url} did not become healthy in {timeout} s")


def run_serve(settings: Settings, with_worker: bool, extra_ports: Sequence[int] = (),
              extra_env: dict[str, str] | None = None) -> int:
    """Run until interrupted (Ctrl+C or SIGTERM); returns gunicorn's exit code.
    `extra_env`: variables for the server's processes (settings given on the command line)."""
    with ExitStack() as stack:
        settings = ensure_redis(stack, settings)
        server = stack.enter_context(backend_processes(
            settings, with_worker=with_worker, extra_ports=extra_ports, extra_env=extra_env))
        log.info("labelpilot serving on http://%s:%d (%d workers x %d threads)", settings.host,
                 settings.port, settings.workers, settings.threads)
        signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.send_signal(signal.SIGTERM)
            return server.wait()


def run_worker(settings: Settings, queues: tuple[str, ...] = QUEUES) -> None:
    from rq import Worker

    from labelpilot.redis_conn import connect

    Worker(list(queues), connection=connect(settings)).work(with_scheduler=False)
