"""Webhook bursts: how fast `/webhook` acknowledges, and how training requests coalesce.

    .venv/bin/python -m bench.webhooks [--events 200] [--clients 8] [--json out.json]

A real gunicorn backend (2 workers, no model preloaded) and no RQ worker, so training jobs stay
queued. Redis is DB 13 of 127.0.0.1:6379, flushed first. `--clients` threads send `--events`
Label Studio payloads (every 10th a START_TRAINING, the others ANNOTATION_CREATED), each on a
new connection as Label Studio does:

1. project 1, default settings (train_every=0): only START_TRAINING queues training;
2. project 2 with train_every=5: every 5th annotation also asks for training;
3. project 1 again, its job marked as running (as a worker would): half as many
   START_TRAINING events must queue exactly one deferred follow-up.

Jobs are counted in RQ (queue `labelpilot`, its registries and the key's pointers, via
`labelpilot.trainers.queue.jobs`);
"coalesced" is the growth of the jobs' coalesced counters over the burst.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests

from bench.common import (
    LABEL_CONFIG,
    Backend,
    Client,
    bench_main,
    bench_parser,
    default_model,
    gunicorn_backend,
    percentile,
    progress,
    table,
)
from bench.swap import bench_redis

WORKERS = 2
START_EVERY = 10  # one START_TRAINING per this many events
TRAIN_EVERY = 5
WARM_PROJECT = 99
EVENTS_STREAM = "labelpilot:ls:training-events"
CLOSE = {"Connection": "close"}


# --------------------------------------------------------------------------- payloads


def project_body(project: int) -> dict[str, Any]:
    return {
        "id": project,
        "title": f"bench project {project}",
        "label_config": LABEL_CONFIG.read_text(),
        "created_at": "2026-01-01T00:00:00.000000Z",
        "model_version": "",
        "show_collab_predictions": True,
    }


def annotation_created(project: int, i: int) -> dict[str, Any]:
    """What Label Studio 1.x posts when an annotation is submitted."""
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": i,
            "task": i,
            "completed_by": 1,
            "result": [],
            "project": project,
            "was_cancelled": False,
            "ground_truth": False,
            "lead_time": 4.2,
            "created_at": "2026-01-01T00:00:00.000000Z",
        },
        "project": project_body(project),
        "task": {"id": i, "data": {"image": f"/data/upload/{project}/{i}.png"}, "project": project},
    }


def start_training(project: int) -> dict[str, Any]:
    return {"action": "START_TRAINING", "project": {"id": project}}


def mixed_events(project: int, count: int) -> list[dict[str, Any]]:
    return [
        start_training(project)
        if i % START_EVERY == START_EVERY - 1
        else annotation_created(project, i + 1)
        for i in range(count)
    ]


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Ack:
    """One `/webhook` call: client-side latency, HTTP status (0: no answer), what it did."""

    ms: float
    status: int
    job: str | None
    outcome: str | None  # enqueued | coalesced | follow-up | counted


def send(url: str, payload: dict[str, Any]) -> Ack:
    started = time.perf_counter()
    try:
        response = requests.post(f"{url}/webhook", json=payload, headers=CLOSE, timeout=30)
    except requests.RequestException:
        return Ack((time.perf_counter() - started) * 1000, 0, None, None)
    ms = (time.perf_counter() - started) * 1000
    try:
        body = response.json()
    except ValueError:
        body = {}
    return Ack(ms, response.status_code, body.get("job"), body.get("queue"))


def burst(url: str, payloads: list[dict[str, Any]], clients: int) -> list[Ack]:
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda payload: send(url, payload), payloads))


def warm_up(url: str, clients: int) -> None:
    """Annotations of a project that never trains: every worker has parsed a payload and
    talked to Redis before the clock starts."""
    acks = burst(url, [annotation_created(WARM_PROJECT, i) for i in range(4 * clients)], clients)
    if any(a.status != 201 for a in acks):
        raise RuntimeError(f"warm-up webhooks failed: {Counter(a.status for a in acks)}")


# --------------------------------------------------------------------------- RQ state


def job_meta(connection: redis.Redis, project: int) -> dict[str, dict[str, Any]]:
    """Training jobs of project `project` (queued, deferred, started, ...) by id."""
    from labelpilot.trainers.queue import jobs

    return {j["id"]: j for j in jobs(connection, f"ls-{project}", limit=10_000)}


def coalesced(jobs: dict[str, dict[str, Any]]) -> int:
    return sum(int(j.get("coalesced", 0)) for j in jobs.values())


def mark_running(connection: redis.Redis, project: int, job_id: str) -> None:
    """What an RQ worker does when it picks the job up (as tests/test_training_queue.py)."""
    from rq import Queue
    from rq.job import Job, JobStatus

    from labelpilot.trainers import queue

    job = Job.fetch(job_id, connection=connection)
    Queue(queue.QUEUE_NAME, connection=connection).remove(job)
    job.set_status(JobStatus.STARTED)
    queue.mark_started(connection, f"ls-{project}", job.id)


@contextmanager
def heartbeats(connection: redis.Redis, project: int, job_id: str) -> Iterator[None]:
    """Keep the simulated job alive, as `train_project` does, where the queue has heartbeats
    (else a long burst would see it reaped as dead)."""
    from labelpilot.trainers import queue

    beat: Callable[..., None] | None = getattr(queue, "heartbeat", None)
    period = float(getattr(queue, "ALIVE_TTL_S", 20)) / 4
    stop = threading.Event()

    def run() -> None:
        while beat is not None and not stop.wait(period):
            beat(connection, f"ls-{project}", job_id)

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    project: int
    payloads: list[dict[str, Any]]

    def run(self, connection: redis.Redis, url: str, clients: int) -> dict[str, Any]:
        before = job_meta(connection, self.project)
        recorded = connection.xlen(EVENTS_STREAM)
        started = time.monotonic()
        acks = burst(url, self.payloads, clients)
        seconds = time.monotonic() - started
        after = job_meta(connection, self.project)
        new = {k: v for k, v in after.items() if k not in before}
        latency = [a.ms for a in acks]
        return {
            "scenario": self.name,
            "project": self.project,
            "events": len(acks),
            "actions": dict(Counter(str(p["action"]) for p in self.payloads)),
            "seconds": seconds,
            "statuses": dict(Counter(str(a.status) for a in acks)),
            "recorded": connection.xlen(EVENTS_STREAM) - recorded,
            "p50_ms": percentile(latency, 50),
            "p95_ms": percentile(latency, 95),
            "p99_ms": percentile(latency, 99),
            "max_ms": max(latency),
            "outcomes": dict(Counter(str(a.outcome) for a in acks)),
            "jobs_created": len(new),
            "job_ids_in_acks": len({a.job for a in acks if a.job}),
            "coalesced": coalesced(after) - coalesced(before),
            "new_jobs": [{k: j[k] for k in ("id", "status", "meta")} for j in new.values()],
        }


def follow_up_check(connection: redis.Redis, result: dict[str, Any], running: str) -> str:
    """One line: is the single new job deferred on the running one?"""
    from rq.job import Job

    if result["jobs_created"] != 1:
        return f"expected exactly 1 follow-up, found {result['jobs_created']}"
    job = Job.fetch(result["new_jobs"][0]["id"], connection=connection)
    status = getattr(job.get_status(), "value", job.get_status())
    depends = (
        "depends on the running job"
        if job.dependency_ids == [running]
        else (f"depends on {job.dependency_ids} (not the running job!)")
    )
    return f"exactly 1 follow-up queued: {job.id} ({status}, {depends})"


def run_scenarios(
    connection: redis.Redis, url: str, events: int, clients: int
) -> tuple[list[dict[str, Any]], str]:
    from labelpilot.trainers.settings import save_params

    results = []
    progress(f"burst 1: {events} events to project 1 (train_every=0)...")
    results.append(
        Scenario("1 default (train_every=0)", 1, mixed_events(1, events)).run(
            connection, url, clients
        )
    )
    save_params(connection, "ls-2", train_every=TRAIN_EVERY)
    progress(f"burst 2: {events} events to project 2 (train_every={TRAIN_EVERY})...")
    results.append(
        Scenario(f"2 train_every={TRAIN_EVERY}", 2, mixed_events(2, events)).run(
            connection, url, clients
        )
    )
    first = results[0]["new_jobs"]
    if len(first) != 1:
        raise RuntimeError(f"burst 1 should have made exactly one job, made {len(first)}")
    running = str(first[0]["id"])
    mark_running(connection, 1, running)
    during = max(1, events // 2)
    progress(f"burst 3: {during} START_TRAINING to project 1 while its job 'runs'...")
    with heartbeats(connection, 1, running):
        scenario = Scenario("3 during training", 1, [start_training(1)] * during)
        results.append(scenario.run(connection, url, clients))
    return results, follow_up_check(connection, results[2], running)


# --------------------------------------------------------------------------- report


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = (
        f"{s['clients']} clients, {WORKERS} gunicorn workers, no RQ worker, every "
        f"{START_EVERY}th event START_TRAINING, {s['cpus']} CPUs, load avg "
        f"{s['load_before']:.2f} -> {s['load_after']:.2f}\n"
    )
    rows = [
        (
            "scenario",
            "events",
            "status",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "acks",
            "jobs created",
            "coalesced",
        )
    ]
    for r in report["scenarios"]:
        statuses = " ".join(f"{k}x{v}" for k, v in sorted(r["statuses"].items()))
        outcomes = " ".join(f"{k}:{v}" for k, v in sorted(r["outcomes"].items()))
        rows.append(
            (
                r["scenario"],
                str(r["events"]),
                statuses,
                f"{r['p50_ms']:.1f}",
                f"{r['p95_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['max_ms']:.1f}",
                outcomes,
                str(r["jobs_created"]),
                str(r["coalesced"]),
            )
        )
    recorded = ", ".join(f"{r['recorded']}/{r['events']}" for r in report["scenarios"])
    notes = f"events recorded in {EVENTS_STREAM}: {recorded}\nburst 3: {report['follow_up']}"
    return "\n".join([head, table(rows), "", notes])


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.webhooks", __doc__)
    parser.add_argument("--events", type=int, default=200, help="events per burst (200)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent senders (8)")
    return parser.parse_args(argv)


def start(stack: ExitStack) -> Backend:
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhooks-")))
    os.environ["LABELPILOT_PRELOAD"] = ""  # webhooks only: no model in the workers
    backend = stack.enter_context(gunicorn_backend(tmp, default_model(), WORKERS))
    Client(backend, "").wait_healthy()
    return backend


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "events": args.events,
        "clients": args.clients,
        "workers": WORKERS,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
    }
    connection = bench_redis()
    with ExitStack() as stack:
        backend = start(stack)
        warm_up(backend.url, args.clients)
        scenarios, follow_up = run_scenarios(connection, backend.url, args.events, args.clients)
    settings["load_after"] = os.getloadavg()[0]
    return {"settings": settings, "scenarios": scenarios, "follow_up": follow_up}


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(parse_args(argv), run_bench, render)


if __name__ == "__main__":
    sys.exit(main())
