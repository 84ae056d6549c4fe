"""Self-healing `labelpilot serve`: dead workers and a dead embedded Redis come back, children
die with their supervisor, and /health, /metrics and webhook replies say when training can't
happen. Real processes throughout, watched in the process table (/proc)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from rq import Queue, Worker
from rq.job import Job, JobStatus

from labelpilot.adapters.cvat.webhook import signature
from labelpilot.embedded_redis import free_port
from labelpilot.processes import exit_with_parent
from labelpilot.supervisor import Child, Supervisor
from labelpilot.trainers.queue_status import (
    NO_WORKER_WARNING,
    QueueMonitor,
    forget_worker,
    queue_status,
)
from tests.conftest import REPO, start_backend
from tests.helpers import wait_for

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl")


# -- the process table -------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of `pid`, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[1] == pid \
                and stat[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


# -- the parts, without servers ----------------------------------------------------------------

@linux_only
def test_a_child_exits_when_its_parent_is_killed_hard():
    parent = subprocess.Popen([sys.executable, "-c", (
        "import signal, subprocess, sys, time\n"
        "from labelpilot.processes import exit_with_parent\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=exit_with_parent(signal.SIGTERM))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait()
    wait_for("the orphan to exit", lambda: not alive(child), timeout=5)


def test_the_supervisor_restarts_a_dead_child_and_backs_off_when_it_keeps_dying(caplog):
    starts: list[subprocess.Popen[bytes]] = []
    exits: list[int] = []

    def start() -> subprocess.Popen[bytes]:
        starts.append(subprocess.Popen(["sleep", "60"], preexec_fn=exit_with_parent()))
        return starts[-1]

    supervisor = Supervisor(min_backoff=0.2, max_backoff=0.8, stable_after=30)
    supervisor.add(Child("sleeper", start, lambda p: exits.append(p.pid)))
    try:
        for round_ in range(3):
            starts[-1].kill()
            starts[-1].wait()
            wait_for("a restart", lambda n=round_: (supervisor.poll(), len(starts) == n + 2)[1],
                     timeout=5)
        assert exits == [p.pid for p in starts[:3]]
        assert supervisor.children[0].restarts == 3
        assert supervisor.children[0].backoff == 0.8  # 0.2 → 0.4 → 0.8: it kept dying young
        assert alive(starts[-1].pid)
        assert "sleeper (pid" in caplog.text and "restarted sleeper" in caplog.text
    finally:
        supervisor.stop(grace=2)
    assert starts[-1].poll() is not None


def test_queue_status_counts_workers_depth_and_the_oldest_waiting_job(redis_url):
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("labelpilot-status-test", connection=connection)
    queue.empty()
    empty = queue_status(connection, queue.name)
    assert (empty.redis_ok, empty.workers, empty.depth, empty.oldest_waiting_s) == (
        True, 0, 0, None)
    assert empty.warnings == [NO_WORKER_WARNING]

    worker = Worker([queue], connection=connection, name=f"status-test-{os.getpid()}")
    worker.register_birth()
    queue.enqueue("os.getpid")
    time.sleep(0.2)
    queue.enqueue("os.getpid")
    status = queue_status(connection, queue.name)
    assert (status.workers, status.depth) == (1, 2) and not status.warnings
    assert status.oldest_waiting_s is not None and status.oldest_waiting_s >= 0.2
    assert forget_worker(connection, worker.name) and not forget_worker(connection, "nobody")
    assert queue_status(connection, queue.name).workers == 0
    queue.empty()

    closed = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    started = time.monotonic()
    down = QueueMonitor(closed, timeout=0.1).status()
    assert not down.redis_ok and down.error and time.monotonic() - started < 0.5
    assert down.as_dict()["redis"] == "unreachable"


# -- a gunicorn without any RQ worker ----------------------------------------------------------

@pytest.mark.slow
def test_webhooks_while_no_worker_is_alive_say_so_and_health_stays_connectable(
        tmp_path, redis_url):
    connection = redis.Redis.from_url(redis_url)
    for worker in Worker.all(connection=connection):  # none from earlier tests
        worker.register_death()
    backend = start_backend(tmp_path, {"REDIS_URL": redis_url, "LABELPILOT_PRELOAD": "",
                                       "LABELPILOT_CVAT_WEBHOOK_SECRET": "s3cret",
                                       "LABELPILOT_CVAT_PORT": "0"}, workers=1)
    try:
        answer = requests.post(f"{backend.url}/webhook", timeout=10,
                               json={"action": "START_TRAINING", "project": {"id": 9101}})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert body["workers"] == 0 and body["warning"] == NO_WORKER_WARNING
        wait_for("the warning in the log", lambda: "no RQ worker is alive" in
                 backend.log.read_text(), timeout=5)
        assert any("WARNING" in line and "no RQ worker is alive" in line and body["job"] in line
                   for line in backend.log.read_text().splitlines())

        event = json.dumps({"event": "update:task", "task": {"id": 9103, "status": "completed"},
                            "before_update": {"status": "annotation"}}).encode()
        cvat = requests.post(f"{backend.url}/cvat/webhook", data=event, timeout=10, headers={
            "Content-Type": "application/json", "X-Signature-256": signature("s3cret", event)})
        assert cvat.status_code == 202, cvat.text
        assert cvat.json()["workers"] == 0 and cvat.json()["warning"] == NO_WORKER_WARNING
        wait_for("the CVAT warning in the log", lambda: f"CVAT task 9103: training job "
                 f"{cvat.json()['job']}" in backend.log.read_text(), timeout=5)

        health = requests.get(f"{backend.url}/health", timeout=5)
        assert health.status_code == 200  # Label Studio connects a backend without a worker
        training = health.json()["training"]
        assert training["workers"] == 0 and training["queue_depth"] >= 1
        assert training["oldest_waiting_s"] >= 0 and NO_WORKER_WARNING in training["warnings"]

        metrics = requests.get(f"{backend.url}/metrics", timeout=5).text
        assert "labelpilot_redis_up 1.0" in metrics and "labelpilot_rq_workers 0.0" in metrics
        depth = next(line for line in metrics.splitlines()
                     if line.startswith("labelpilot_queue_depth "))
        assert float(depth.split()[1]) >= 1
        assert "labelpilot_queue_oldest_waiting_seconds" in metrics
    finally:
        backend.stop()
        Queue("labelpilot", connection=connection).empty()


# -- `labelpilot serve` ------------------------------------------------------------------------

@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    url: str
    data: Path
    log: Path

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url((self.data / "redis" / "url").read_text().strip(),
                                    socket_connect_timeout=1)

    def child(self, marker: str) -> int | None:
        found = [pid for pid in children(self.process.pid) if marker in cmdline(pid)]
        assert len(found) <= 1, found
        return found[0] if found else None

    def health(self) -> requests.Response:
        return requests.get(f"{self.url}/health", timeout=5)


def start_serve(tmp: Path, *args: str) -> Serve:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",
                                                             "PROMETHEUS_MULTIPROC_DIR")}
    env.update({"LABELPILOT_DATA_DIR": str(tmp / "data"), "MODEL_DIR": str(tmp / "models"),
                "LABELPILOT_PRELOAD": "", "LABELPILOT_CVAT_PORT": str(free_port())})
    port = free_port()
    log = tmp / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "labelpilot", "serve", "--port", str(port), "--host",
         "127.0.0.1", "--workers", "1", *args], env=env, cwd=REPO,
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    serve = Serve(process, f"http://127.0.0.1:{port}", tmp / "data", log)

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return serve.health().status_code == 200
        except requests.RequestException:
            return False

    wait_for("serve to answer /health", healthy, timeout=120)
    return serve


def stop_serve(serve: Serve) -> None:
    if serve.process.poll() is None:
        serve.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
        serve.process.terminate()
        try:
            serve.process.wait(60)
        except subprocess.TimeoutExpired:
            serve.process.kill()
            serve.process.wait()


def run_job(connection: redis.Redis, timeout: float = 60) -> Job:
    """A tiny job on the training queue, run by whichever worker takes it."""
    job = Queue("labelpilot", connection=connection).enqueue("os.getpid")
    wait_for("the job to finish", lambda: job.get_status(refresh=True) == JobStatus.FINISHED,
             timeout=timeout)
    job.refresh()
    return job


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    server = start_serve(tmp_path_factory.mktemp("serve"))
    yield server
    stop_serve(server)


@linux_only
@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_new_one_takes_jobs(serve):
    worker = wait_for("serve's RQ worker", lambda: serve.child("labelpilot worker"))
    assert isinstance(worker, int)
    os.kill(worker, signal.SIGKILL)
    started = time.monotonic()
    replacement = wait_for("a new worker", lambda: (pid := serve.child("labelpilot worker"))
                           and pid != worker and pid, timeout=10)
    assert time.monotonic() - started < 5
    assert "restarted RQ worker" in serve.log.read_text()
    connection = serve.redis()
    job = run_job(connection)
    assert job.worker_name and job.worker_name in cmdline(int(replacement))  # type: ignore[arg-type]
    # the dead worker was unregistered at once: only the new one counts
    assert [w.name for w in Worker.all(connection=connection)] == [job.worker_name]
    wait_for("/health to count one worker",
             lambda: serve.health().json()["training"]["workers"] == 1, timeout=5)


@linux_only
@pytest.mark.slow
def test_a_killed_embedded_redis_comes_back_on_its_port_with_its_data(serve):
    connection = serve.redis()
    url = (serve.data / "redis" / "url").read_text()
    connection.set("labelpilot:test:survives", "yes")
    old = serve.child("redis-server")
    assert old is not None
    # hold the supervisor still, so the time without Redis can be looked at
    serve.process.send_signal(signal.SIGSTOP)
    try:
        os.kill(old, signal.SIGKILL)
        wait_for("redis-server to die", lambda: not alive(old), timeout=5)
        health = serve.health()
        assert health.status_code == 503, health.text  # a load balancer takes it out
        assert health.json()["status"] == "DEGRADED"
        assert health.json()["training"]["redis"] == "unreachable"
        webhook = requests.post(f"{serve.url}/webhook", timeout=10,
                                json={"action": "START_TRAINING", "project": {"id": 9102}})
        assert webhook.status_code == 503
    finally:
        serve.process.send_signal(signal.SIGCONT)
    new = wait_for("a new redis-server", lambda: (pid := serve.child("redis-server"))
                   and pid != old and pid, timeout=15)
    assert new
    assert (serve.data / "redis" / "url").read_text() == url  # same port: children keep it
    wait_for("/health to be UP", lambda: serve.health().status_code == 200, timeout=10)
    assert serve.health().json()["training"]["redis"] == "up"
    assert connection.get("labelpilot:test:survives") == b"yes"  # from the AOF
    # logged once its start returns, which may be a moment after it answers
    wait_for("the restart to be logged",
             lambda: "restarted embedded redis-server" in serve.log.read_text(), timeout=10)
    run_job(connection)  # the worker found it again


@linux_only
@pytest.mark.slow
def test_killing_serve_leaves_no_orphans_even_with_a_job_running(tmp_path):
    server = start_serve(tmp_path)
    try:
        connection = server.redis()
        job = Queue("labelpilot", connection=connection).enqueue("time.sleep", 120)
        wait_for("the job to start", lambda: job.get_status(refresh=True) == JobStatus.STARTED)
        tree = descendants(server.process.pid)
        named = " | ".join(cmdline(pid) for pid in tree)
        assert "redis-server" in named and "labelpilot worker" in named and "gunicorn" in named
        worker = server.child("labelpilot worker")
        assert worker and descendants(worker), "the work horse runs the job"
        server.process.kill()
        server.process.wait()
        wait_for("every child to exit", lambda: not any(alive(pid) for pid in tree),
                 timeout=45)
    finally:
        stop_serve(server)
