"""Start the pieces of `labelpilot serve`: Redis (embedded if needed), an RQ worker, gunicorn.

`run_serve` supervises the worker and the embedded Redis (restarted when they die, see
labelpilot.supervisor); every child gets a parent-death signal, so none outlives a `serve` that
was killed hard (SIGKILL, OOM killer).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

from labelpilot.embedded_redis import EmbeddedRedis
from labelpilot.processes import exit_with_parent, set_parent_death_signal, stop_processes
from labelpilot.settings import Settings
from labelpilot.supervisor import Child, Supervisor

log = logging.getLogger(__name__)
QUEUES = ("labelpilot",)
WORKER_TTL_S = 60  # RQ's default is 420: a worker killed hard stops counting after ttl + 60 s


def ensure_redis(stack: ExitStack, settings: Settings,
                 supervisor: Supervisor | None = None) -> Settings:
    """`settings` if REDIS_URL is set, else an embedded redis-server under the data dir
    (stopped on exit; restarted on the same port and AOF by `supervisor` when it dies) and
    settings that point at it (also exported to child processes)."""
    if settings.redis_url:
        return settings
    server = EmbeddedRedis(settings.resolved_data_dir / "redis")
    url = server.start()
    stack.callback(server.stop)
    if supervisor is not None:
        supervisor.add(Child("embedded redis-server", lambda: _restarted(server),
                             process=server.process))
    os.environ["REDIS_URL"] = url
    from labelpilot.redis_conn import get_redis

    get_redis.cache_clear()
    log.info("REDIS_URL unset: started embedded redis at %s", url)
    return settings.model_copy(update={"redis_url": url})


def _restarted(server: EmbeddedRedis) -> subprocess.Popen[bytes]:
    server.start()
    assert server.process is not None
    return server.process


def _worker_child(settings: Settings, env: dict[str, str]) -> Child:
    """An RQ worker under a fresh name each start; unregistered when seen dead."""
    names: dict[int, str] = {}

    def start() -> subprocess.Popen[bytes]:
        name = f"{socket.gethostname()}.serve-{os.getpid()}.{uuid.uuid4().hex[:8]}"
        process = subprocess.Popen([sys.executable, "-m", "labelpilot", "worker", "--name", name],
                                   env=env, preexec_fn=exit_with_parent(signal.SIGKILL))
        names[process.pid] = name
        return process

    def on_exit(process: subprocess.Popen[bytes]) -> None:
        from labelpilot.redis_conn import connect
        from labelpilot.trainers.queue_status import forget_worker

        forget_worker(connect(settings), names.pop(process.pid))

    return Child("RQ worker", start, on_exit)


def gunicorn_command(host: str, port: int, workers: int,
                     extra_ports: Sequence[int | str] = (), *,
                     timeout: int = 120, app: str = "labelpilot.asgi:app") -> list[str]:
    """`extra_ports`: the same app on more ports (CVAT's facade port, direct-mode ports): a
    port on `host`, or a whole bind such as ``"10.0.0.5:8070"`` (another address).
    uvicorn workers (see labelpilot.asgi), whose WSGI thread pools the app sizes itself from
    its settings (THREADS)."""
    conf = Path(__file__).with_name("gunicorn_conf.py")
    binds = [arg for p in (port, *extra_ports)
             for arg in ("-b", p if isinstance(p, str) else f"{host}:{p}")]
    return [sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", str(workers),
            "-k", "labelpilot.http_worker.Worker", "--timeout", str(timeout), *binds, app]


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
                      extra_ports: Sequence[int | str] = (),
                      supervisor: Supervisor | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """gunicorn (and an RQ worker) running until the block ends; yields the gunicorn process.
    The worker is restarted when it dies if the caller polls `supervisor`."""
    env = _serving_env(settings, extra_env or {})
    supervisor = supervisor if supervisor is not None else Supervisor()
    workers: list[Child] = []
    server = None
    try:
        if with_worker:
            workers.append(supervisor.add(_worker_child(settings, env)))
        server = subprocess.Popen(gunicorn_command(
            settings.host, settings.port, settings.workers, extra_ports,
            timeout=settings.timeout), env={**env, **settings.env_of(["threads"])},
            preexec_fn=exit_with_parent(signal.SIGTERM))
        yield server
    finally:
        for child in workers:  # stopped here: no restarts while the block ends
            supervisor.children.remove(child)
        stop_processes([*(c.process for c in workers), server], grace=30)


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


def run_serve(settings: Settings, with_worker: bool, extra_ports: Sequence[int | str] = (),
              extra_env: dict[str, str] | None = None) -> int:
    """Run until interrupted (Ctrl+C or SIGTERM); returns gunicorn's exit code.
    `extra_env`: variables for the server's processes (settings given on the command line)."""
    supervisor = Supervisor()
    with ExitStack() as stack:
        settings = ensure_redis(stack, settings, supervisor)
        server = stack.enter_context(backend_processes(
            settings, with_worker=with_worker, extra_ports=extra_ports, extra_env=extra_env,
            supervisor=supervisor))
        log.info("labelpilot serving on http://%s:%d (%d workers x %d threads)", settings.host,
                 settings.port, settings.workers, settings.threads)
        stopping = threading.Event()

        def stop(*_: object) -> None:  # Ctrl+C reaches all children too: none is restarted
            stopping.set()
            server.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while server.poll() is None:
            if not stopping.is_set():
                supervisor.poll()
            stopping.wait(0.5)
        return server.wait()


def run_worker(settings: Settings, queues: tuple[str, ...] = QUEUES,
               name: str | None = None) -> None:
    from rq import Worker

    import labelpilot.runtime  # noqa: F401  every job's work horse (a fork) starts with it loaded
    from labelpilot.backends.offline import preload_ultralytics
    from labelpilot.redis_conn import connect

    preload_ultralytics()  # and with ultralytics and torch: 2-3 s less for every job

    class HorseDiesWithWorker(Worker):
        """RQ's work horse runs in its own process group: without this it outlives a worker
        killed hard and keeps training with no one to record the result."""

        def main_work_horse(self, *args: object, **kwargs: object) -> None:
            set_parent_death_signal(signal.SIGKILL, self.pid or os.getppid())  # the worker's
            super().main_work_horse(*args, **kwargs)  # type: ignore[arg-type]

    threading.Thread(target=_reap_dead_trainings, args=(settings,), name="reaper",
                     daemon=True).start()
    HorseDiesWithWorker(list(queues), name=name, connection=connect(settings),
                        worker_ttl=WORKER_TTL_S).work(with_scheduler=False)


def _reap_dead_trainings(settings: Settings) -> None:
    """Every worker fails and retries trainings whose process died (their heartbeats stopped),
    wherever they ran: a job lost with its host runs again on a host that is alive."""
    from labelpilot.redis_conn import connect
    from labelpilot.trainers.queue import ALIVE_TTL_S, reap_all

    connection = connect(settings)
    while True:
        time.sleep(ALIVE_TTL_S / 4)
        try:
            for job_id in reap_all(connection):
                log.warning("training job %s lost its process: marked failed and queued "
                            "again (unless a follow-up waits or its retries are used up)", job_id)
        except Exception as exc:  # Redis down or restarting: try again on the next round
            log.info("reaping dead trainings: %s", exc)
