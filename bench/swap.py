"""Hot swap under load: promote a new model version while `/predict` is busy, then roll back.

    .venv/bin/python -m bench.swap [--clients 4] [--phase-seconds 10] [--json out.json]

A real gunicorn backend (2 workers) serves project 1 of `detection_shapes.xml`; its store key
`ls-1-label` has v1 (the weak shapes model, promoted before the start) and v2 (the good one).
`--clients` threads send `POST /predict` (2 tasks whose images come from a local HTTP server)
without pause through four phases of `--phase-seconds` each:

    before    v1 serves
    during    v2 is promoted when the phase starts
    after     nothing happens
    rollback  `ModelStore.rollback` (back to v1) when the phase starts

Every request's latency, status and answered `model_version` is kept. Right after each promotion
another thread polls `POST /setup` on fresh connections (so it lands on either worker) until
every answer for 0.5 s names the new version: "all workers swapped after X s".
Redis is DB 13 of 127.0.0.1:6379, flushed first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from bench.common import (
    REPO,
    Backend,
    Client,
    bench_main,
    bench_parser,
    default_model,
    gunicorn_backend,
    make_images,
    percentile,
    progress,
    serve_directory,
    table,
)

BENCH_REDIS_URL = "redis://127.0.0.1:6379/13"
KEY = "ls-1-label"
WORKERS = 2
TASKS_PER_REQUEST = 2
IMAGES = 16
IMAGE_SIZE = 320
SETTLE_S = 0.5  # every /setup answer in this window must name the new version
SWAP_TIMEOUT_S = 60.0
POLL_PAUSE_S = 0.02
CLOSE = {"Connection": "close"}  # a new connection per request: the kernel picks the worker


# --------------------------------------------------------------------------- setup


def bench_redis() -> redis.Redis:
    """DB 13, flushed; REDIS_URL points every process started from here at it."""
    os.environ["REDIS_URL"] = BENCH_REDIS_URL
    os.environ["LABELPILOT_DOWNLOAD_WEIGHTS"] = "0"
    connection = redis.Redis.from_url(BENCH_REDIS_URL)
    connection.flushdb()
    return connection


def fill_store(store_root: Path, connection: redis.Redis) -> None:
    """v1 = weak model (promoted), v2 = good model, under `KEY`."""
    from labelpilot.backends.model_store import ModelStore
    from labelpilot.shapes_model import WEAK_RECIPE, ensure_shapes_model

    store = ModelStore(store_root, connection)
    weak = ensure_shapes_model(REPO / ".cache" / "models", WEAK_RECIPE)
    good = default_model()
    store.write_version(KEY, weak, {"source": str(weak), "recipe": "weak"})
    store.write_version(KEY, good, {"source": str(good), "recipe": "good"})
    store.promote(KEY, "v1", by="bench")


def store_for(store_root: Path, connection: redis.Redis) -> Any:
    from labelpilot.backends.model_store import ModelStore

    return ModelStore(store_root, connection)


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Sample:
    """One `/predict` call: monotonic start/end, HTTP status (0: no answer), version answered."""

    started: float
    ended: float
    status: int
    version: str | None
    ok: bool


def predict_once(client: Client, session: requests.Session, ids: list[int]) -> Sample:
    started = time.monotonic()
    try:
        response = session.post(
            f"{client.backend.url}/predict", json=client.body(ids), headers=CLOSE, timeout=120
        )
    except requests.RequestException:
        return Sample(started, time.monotonic(), 0, None, False)
    ended = time.monotonic()
    try:
        body = response.json()
    except ValueError:
        body = {}
    results = body.get("results") or [{}]
    ok = response.status_code == 200 and "errors" not in body
    return Sample(started, ended, response.status_code, results[0].get("model_version"), ok)


class Load:
    """`clients` threads calling `/predict` back to back until `stop()`."""

    def __init__(self, client: Client, clients: int):
        self.client = client
        self.clients = clients
        self.samples: list[Sample] = []  # list.append is atomic
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)
        ]

    def _run(self, n: int) -> None:
        with requests.Session() as session:
            i = n * TASKS_PER_REQUEST
            while not self._stop.is_set():
                ids = [(i + k) % IMAGES for k in range(TASKS_PER_REQUEST)]
                self.samples.append(predict_once(self.client, session, ids))
                i += self.clients * TASKS_PER_REQUEST

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(150)


def warm_up(client: Client, clients: int) -> None:
    """Concurrent rounds so that both workers have loaded v1 before the clock starts."""
    with requests.Session() as session, ThreadPoolExecutor(2 * clients) as pool:
        for _ in range(3):
            calls = [[k % IMAGES, (k + 1) % IMAGES] for k in range(2 * clients)]
            for sample in pool.map(lambda ids: predict_once(client, session, ids), calls):
                if not sample.ok:
                    raise RuntimeError(
                        f"warm-up /predict failed ({sample.status}):\n{client.backend.log_tail()}"
                    )


# --------------------------------------------------------------------------- swap time


@dataclass
class Swap:
    """Time from a promotion until every `/setup` answer names the new version."""

    label: str
    expected: str
    promoted_at: float = 0.0  # monotonic
    swapped_after_s: float | None = None  # None: not within SWAP_TIMEOUT_S
    polls: int = 0
    stale_polls: int = 0  # answers naming another version (or failing) after the promotion
    poll_errors: int = 0


def setup_version(backend: Backend, config: str) -> str | None:
    body = {"project": "1.0", "schema": config}
    try:
        response = requests.post(f"{backend.url}/setup", json=body, headers=CLOSE, timeout=10)
        return str(response.json()["model_version"]) if response.status_code == 200 else None
    except (requests.RequestException, ValueError, KeyError):
        return None


def watch_swap(swap: Swap, backend: Backend, config: str) -> None:
    """Poll /setup until all answers over SETTLE_S name `swap.expected`."""
    streak_since: float | None = None  # when the first answer of the current good streak came
    while time.monotonic() - swap.promoted_at < SWAP_TIMEOUT_S:
        version = setup_version(backend, config)
        now = time.monotonic()
        swap.polls += 1
        if version != swap.expected:
            swap.stale_polls += 1
            swap.poll_errors += version is None
            streak_since = None
        elif streak_since is None:
            streak_since = now
        elif now - streak_since >= SETTLE_S:
            swap.swapped_after_s = streak_since - swap.promoted_at
            return
        time.sleep(POLL_PAUSE_S)


def promote_and_watch(
    swap: Swap, action: Callable[[], Any], backend: Backend, config: str
) -> threading.Thread:
    swap.promoted_at = time.monotonic()
    action()
    thread = threading.Thread(target=watch_swap, args=(swap, backend, config), daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    started: float = 0.0
    ended: float = 0.0
    swap: Swap | None = None
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        answered = [s for s in self.samples if s.status]
        latency = [(s.ended - s.started) * 1000 for s in answered] or [0.0]
        versions = Counter(s.version for s in self.samples if s.ok)
        statuses = Counter(str(s.status) for s in self.samples)
        return {
            "phase": self.name,
            "seconds": self.ended - self.started,
            "requests": len(self.samples),
            "failed": sum(not s.ok for s in self.samples),
            "statuses": dict(statuses),
            "p50_ms": percentile(latency, 50),
            "p99_ms": percentile(latency, 99),
            "max_ms": max(latency),
            "versions": dict(sorted(versions.items(), key=lambda kv: str(kv[0]))),
            "swap": self.swap_summary(),
        }

    def swap_summary(self) -> dict[str, Any] | None:
        if self.swap is None:
            return None
        old = [s for s in self.samples if s.ok and s.version != self.swap.expected]
        done = self.swap.swapped_after_s
        return {
            **asdict(self.swap),
            "old_answers": len(old),
            "last_old_answer_after_s": max(s.ended for s in old) - self.swap.promoted_at
            if old
            else None,
            # an old answer to a request sent after all workers had swapped: should be 0
            "old_after_swap": sum(s.started > self.swap.promoted_at + done for s in old)
            if done is not None
            else None,
        }


def run_phases(
    load: Load, phases: list[tuple[Phase, Callable[[], threading.Thread | None]]], seconds: float
) -> None:
    """Each phase: its action at the start, then `seconds` of load; watchers are joined."""
    watchers = []
    for phase, action in phases:
        phase.started = time.monotonic()
        progress(f"phase {phase.name} ({seconds:.0f} s)...")
        watcher = action()
        if watcher is not None:
            watchers.append(watcher)
        time.sleep(max(0.0, phase.started + seconds - time.monotonic()))
        phase.ended = time.monotonic()
    load.stop()
    for watcher in watchers:
        watcher.join(SWAP_TIMEOUT_S)
    for phase, _ in phases:
        phase.samples = [s for s in load.samples if phase.started <= s.started < phase.ended]


# --------------------------------------------------------------------------- report


def swap_line(swap: dict[str, Any]) -> str:
    took = swap["swapped_after_s"]
    head = (
        f"{swap['label']}: all workers swapped after {took:.2f} s"
        if took is not None
        else f"{swap['label']}: NOT all workers swapped within {SWAP_TIMEOUT_S:.0f} s"
    )
    last = swap["last_old_answer_after_s"]
    old = f"{last:.2f} s after the promotion" if last is not None else "none"
    return (
        f"{head}\n  {swap['polls']} /setup polls, {swap['stale_polls']} stale, "
        f"{swap['poll_errors']} failed; last old-version /predict answer: {old}; "
        f"old answers to requests sent after the swap: {swap['old_after_swap']}"
    )


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = (
        f"{s['clients']} clients x POST /predict ({TASKS_PER_REQUEST} tasks of "
        f"{IMAGE_SIZE}px), {WORKERS} gunicorn workers, {s['phase_seconds']:.0f} s per phase, "
        f"{s['cpus']} CPUs, load avg {s['load_before']:.2f} -> {s['load_after']:.2f}\n"
    )
    rows = [("phase", "requests", "failed", "p50 ms", "p99 ms", "max ms", "versions seen")]
    for p in report["phases"]:
        versions = ", ".join(f"{k}: {v}" for k, v in p["versions"].items()) or "-"
        rows.append(
            (
                p["phase"],
                str(p["requests"]),
                str(p["failed"]),
                f"{p['p50_ms']:.0f}",
                f"{p['p99_ms']:.0f}",
                f"{p['max_ms']:.0f}",
                versions,
            )
        )
    swaps = [swap_line(p["swap"]) for p in report["phases"] if p["swap"]]
    return "\n".join([head, table(rows), "", *swaps])


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.swap", __doc__)
    parser.add_argument("--clients", type=int, default=4, help="concurrent /predict clients (4)")
    parser.add_argument(
        "--phase-seconds", type=float, default=10.0, help="length of each phase (10)"
    )
    return parser.parse_args(argv)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "clients": args.clients,
        "phase_seconds": args.phase_seconds,
        "workers": WORKERS,
        "cpus": os.cpu_count(),
        "key": KEY,
        "load_before": os.getloadavg()[0],
    }
    connection = bench_redis()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-swap-")))
        (tmp / "images").mkdir()
        make_images(tmp / "images", IMAGES, IMAGE_SIZE)
        store_root = tmp / "models" / "store"  # gunicorn_backend sets MODEL_DIR=tmp/models
        fill_store(store_root, connection)
        store = store_for(store_root, connection)
        image_base = stack.enter_context(serve_directory(tmp / "images"))
        weak = store.get(KEY, "v1").weights
        progress("starting gunicorn with v1 promoted...")
        backend = stack.enter_context(gunicorn_backend(tmp, weak, WORKERS))
        client = Client(backend, image_base)
        stack.callback(client.session.close)
        client.wait_healthy()
        warm_up(client, args.clients)
        phases = [Phase("before"), Phase("during"), Phase("after"), Phase("rollback")]
        phases[1].swap = Swap("promote v1 -> v2", f"{KEY}-v2")
        phases[3].swap = Swap("rollback v2 -> v1", f"{KEY}-v1")
        to_v2, back = phases[1].swap, phases[3].swap
        load = Load(client, args.clients)
        stack.callback(load.stop)
        load.start()
        run_phases(
            load,
            [
                (phases[0], lambda: None),
                (
                    phases[1],
                    lambda: promote_and_watch(
                        to_v2, lambda: store.promote(KEY, "v2", by="bench"), backend, client.config
                    ),
                ),
                (phases[2], lambda: None),
                (
                    phases[3],
                    lambda: promote_and_watch(
                        back, lambda: store.rollback(KEY, by="bench"), backend, client.config
                    ),
                ),
            ],
            args.phase_seconds,
        )
    settings["load_after"] = os.getloadavg()[0]
    return {"settings": settings, "phases": [p.summary() for p in phases]}


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(parse_args(argv), run_bench, render)


if __name__ == "__main__":
    sys.exit(main())
