"""A bulk prediction run shared by several workers: its chunks, claims, heartbeats and
progress live in Redis, whatever platform the items come from.

A run is planned in chunks (lists of items) pushed to a to-do list as the items are listed;
every shard (an RQ job, or `--wait` in the CLI) claims one chunk at a time, predicts it, writes
the predictions and counts it done in one step that only the chunk's current owner can take.
A shard's heartbeat lapses when its worker is killed: another shard puts the chunk back and
does it again. Writing is made idempotent by the platform (`ChunkHandler.handle` skips items
that already hold the run's model version, under the run's write lock), so a chunk done twice
is written once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import redis

from labelpilot.backends.redis_text import as_text

log = logging.getLogger(__name__)
PREFIX = "labelpilot:bulk:"
ALIVE_TTL_S = 10  # a shard refreshes its heartbeat every ALIVE_TTL_S / 4 while it lives
RUN_TTL_S = 7 * 86400
MAX_WRITES_BEHIND = 2  # chunks predicted and waiting for their write (evens out LS's pace)
MAX_FAILED_LISTED = 1000  # failed items kept with their reason (all are counted)

_CLAIM = """
local cid = redis.call('LPOP', KEYS[1])
if cid then redis.call('HSET', KEYS[2], cid, ARGV[1]) end
return cid
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
  return 1
end
return 0
"""
_COMPLETE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], tonumber(ARGV[i + 1])) end
return 1
"""


@dataclass
class ChunkOutcome:
    """What one chunk came to: items written, items that held the version already, failures."""

    written: int = 0
    present: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)  # {"item": ..., "reason": ...}


class ChunkHandler(Protocol):
    """Predict one chunk of items, then write it (idempotent per item and model version).
    A shard writes a chunk while it predicts the next one."""

    def predict(self, items: Sequence[dict[str, Any]]) -> Any: ...

    def write(self, predicted: Any, recheck: Callable[[], bool]) -> ChunkOutcome:
        """Write under the platform's write lock; inside it, when `recheck()` is true, leave
        out the items that hold the version already."""
        ...


Planner = Callable[[], Iterable[tuple[dict[str, Any], str | None]]]
"""Lists a run's items: (item, None) to predict, (item, why) for one left out ("has it")."""


def _text(value: Any) -> str | None:
    return None if value is None else as_text(value)


class BulkRun:
    """One run's state in Redis (see the module doc)."""

    def __init__(self, connection: redis.Redis, run_id: str):
        self.connection = connection
        self.id = run_id
        base = f"{PREFIX}{run_id}"
        self.info_key = base
        self.todo_key = f"{base}:todo"
        self.chunks_key = f"{base}:chunks"
        self.claims_key = f"{base}:claims"
        self.planned_key = f"{base}:planned"
        self.failed_key = f"{base}:failed"
        self.retried_key = f"{base}:retried"  # chunks put back after their shard stopped
        self._claim = connection.register_script(_CLAIM)
        self._release = connection.register_script(_RELEASE)
        self._complete = connection.register_script(_COMPLETE)

    # -- creation and description -------------------------------------------------------

    @classmethod
    def create(cls, connection: redis.Redis, key: str, config: Mapping[str, Any], *,
               total: int, chunk_size: int) -> BulkRun:
        """A new run of queue key `key` (e.g. "predict-ls-3"); `config`: what the shards need
        (JSON), `total`: how many items the project holds."""
        run = cls(connection, f"{key}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}")
        connection.hset(run.info_key, mapping={
            "key": key, "config": json.dumps(dict(config)), "total": total,
            "chunk_size": chunk_size, "created_at": time.time(), "state": "planning",
            "done": 0, "written": 0, "present": 0, "left_out": 0, "failed": 0, "chunks": 0})
        connection.expire(run.info_key, RUN_TTL_S)
        connection.set(active_key(key), run.id, ex=RUN_TTL_S)
        return run

    def info(self) -> dict[str, Any]:
        raw = {as_text(k): as_text(v) for k, v in self.connection.hgetall(self.info_key).items()}
        if not raw:
            raise KeyError(f"no bulk run {self.id} (it ended more than 7 days ago?)")
        out: dict[str, Any] = dict(raw)
        for name in ("total", "done", "written", "present", "left_out", "failed", "chunks",
                     "chunk_size", "processed"):
            out[name] = int(raw.get(name) or 0)
        for name in ("created_at", "started_at", "finished_at"):
            out[name] = float(raw[name]) if raw.get(name) else None
        out["config"] = json.loads(raw.get("config") or "{}")
        return out

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.info()["config"])

    def progress(self) -> dict[str, Any]:
        """done / total, tasks per second over the chunks predicted, the seconds still to go."""
        info = self.info()
        now = info["finished_at"] or time.time()
        elapsed = now - info["started_at"] if info["started_at"] else 0.0
        rate = info["processed"] / elapsed if elapsed > 0 and info["processed"] else None
        left = max(0, info["total"] - info["done"])
        eta = round(left / rate, 1) if rate else None
        return {"run": self.id, "state": info["state"], "done": info["done"],
                "total": info["total"], "written": info["written"], "present": info["present"],
                "left_out": info["left_out"], "failed": info["failed"],
                "rate": round(rate, 2) if rate else None,
                "eta_s": 0.0 if info["state"] == "finished" else eta,
                "seconds": round(elapsed, 2)}

    def failures(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.connection.lrange(self.failed_key, 0, -1)]

    # -- planning -----------------------------------------------------------------------

    def plan(self, planner: Planner, shard: str) -> bool:
        """List all the items into chunks at once (see `planning`); False when another
        shard plans now."""
        steps = self.planning(planner, shard)
        if steps is None:
            return False
        for _ in steps:
            pass
        return True

    def planning(self, planner: Planner, shard: str) -> Iterator[None] | None:
        """List the items into chunks, one chunk per step, so that the planning shard can
        predict between steps. One planner at a time (None: another one plans now); a planner
        whose heartbeat lapsed is taken over, and items it listed are not listed twice."""
        lock = f"{self.info_key}:planner"
        if not self.connection.set(lock, shard, nx=True, ex=ALIVE_TTL_S):
            holder = _text(self.connection.get(lock))
            if holder and holder != shard and self.alive(holder):
                return None
            self.connection.set(lock, shard, ex=ALIVE_TTL_S)
        return self._planning(planner, shard, lock)

    def _planning(self, planner: Planner, shard: str, lock: str) -> Iterator[None]:
        size = int(self.info()["chunk_size"])
        pending: list[dict[str, Any]] = []
        for item, left_out in planner():
            self.connection.set(lock, shard, ex=ALIVE_TTL_S)
            if self.connection.sismember(self.planned_key, str(item["id"])):
                continue  # pushed by an earlier planner of this run
            if left_out is not None:
                pipe = self.connection.pipeline()
                pipe.sadd(self.planned_key, str(item["id"]))
                pipe.hincrby(self.info_key, "left_out", 1)
                pipe.hincrby(self.info_key, "done", 1)
                pipe.execute()
                continue
            pending.append(item)
            if len(pending) >= size:
                self._push(pending)
                pending = []
                yield
        if pending:
            self._push(pending)
        self.connection.hset(self.info_key, "state", "predicting")
        self.connection.expire(self.planned_key, RUN_TTL_S)
        self.connection.delete(lock)

    def _push(self, items: list[dict[str, Any]]) -> None:
        cid = uuid.uuid4().hex[:12]
        pipe = self.connection.pipeline()  # an item counts as listed once it is in a chunk
        pipe.sadd(self.planned_key, *(str(i["id"]) for i in items))
        pipe.hset(self.chunks_key, cid, json.dumps(items))
        pipe.rpush(self.todo_key, cid)
        pipe.hincrby(self.info_key, "chunks", 1)
        pipe.expire(self.chunks_key, RUN_TTL_S)
        pipe.expire(self.todo_key, RUN_TTL_S)
        pipe.execute()

    # -- shards -------------------------------------------------------------------------

    def beat(self, shard: str) -> None:
        self.connection.set(f"{self.info_key}:alive:{shard}", 1, ex=ALIVE_TTL_S)

    def alive(self, shard: str) -> bool:
        return bool(self.connection.exists(f"{self.info_key}:alive:{shard}"))

    def claim(self, shard: str) -> tuple[str, list[dict[str, Any]]] | None:
        cid = _text(self._claim(keys=[self.todo_key, self.claims_key], args=[shard]))
        if cid is None:
            return None
        raw = self.connection.hget(self.chunks_key, cid)
        self.connection.hsetnx(self.info_key, "started_at", time.time())
        return cid, json.loads(raw or "[]")

    def complete(self, shard: str, cid: str, outcome: ChunkOutcome, count: int) -> bool:
        """Count the chunk done, if `shard` still owns it (else another shard took it over
        and will count it). The failures are listed with their reasons."""
        counts = {"done": count, "processed": count, "written": outcome.written,
                  "present": outcome.present, "failed": len(outcome.failed)}
        args: list[Any] = [cid, shard]
        for name, value in counts.items():
            args += [name, value]
        owned = bool(self._complete(keys=[self.claims_key, self.info_key, self.chunks_key],
                                    args=args))
        if owned and outcome.failed:
            pipe = self.connection.pipeline()
            pipe.rpush(self.failed_key, *(json.dumps(f) for f in outcome.failed))
            pipe.ltrim(self.failed_key, 0, MAX_FAILED_LISTED - 1)
            pipe.expire(self.failed_key, RUN_TTL_S)
            pipe.execute()
        return owned

    def reclaim_dead(self) -> int:
        """Put back the chunks of shards whose heartbeat lapsed; how many."""
        back = 0
        for cid, owner in self.connection.hgetall(self.claims_key).items():
            if not self.alive(as_text(owner)):
                back += int(self._release(
                    keys=[self.claims_key, self.todo_key, self.retried_key],
                    args=[as_text(cid), as_text(owner)]))
        if back:
            log.warning("bulk run %s: %d chunk(s) of a stopped shard taken over", self.id, back)
        return back

    def needs_recheck(self, shard: str, cid: str) -> bool:
        """Whether a chunk may have been written already: it was put back after its shard
        stopped, or `shard` lost it to another one (it was slow, not dead), or the run was
        resumed. A chunk written once by the shard that still owns it needs no check: its
        items held no prediction of the version when they were listed."""
        if self.connection.sismember(self.retried_key, cid):
            return True
        return _text(self.connection.hget(self.claims_key, cid)) != shard

    def outstanding(self) -> int:
        return int(self.connection.llen(self.todo_key)) + int(
            self.connection.hlen(self.claims_key))

    def finish(self) -> None:
        if self.connection.hsetnx(self.info_key, "finished_at", time.time()):
            self.connection.hset(self.info_key, "state", "finished")
            key = self.info()["key"]
            if _text(self.connection.get(active_key(key))) == self.id:
                self.connection.delete(active_key(key))

    def fail(self, reason: str) -> None:
        """Stop the run for good (the token died, the project is gone)."""
        self.connection.hset(self.info_key, mapping={"state": "failed", "error": reason,
                                                     "finished_at": time.time()})
        self.connection.delete(self.todo_key)
        key = self.info()["key"]
        if _text(self.connection.get(active_key(key))) == self.id:
            self.connection.delete(active_key(key))


@contextmanager
def write_lock(connection: redis.Redis, name: str, wait_s: float = 600.0) -> Iterator[None]:
    """A Redis lock held while its process lives: it lasts ALIVE_TTL_S and is renewed every
    ALIVE_TTL_S / 4, so a writer killed inside frees it as soon as its chunk is taken over
    (a fixed long timeout would stall every other writer for that long)."""
    lock = connection.lock(name, timeout=ALIVE_TTL_S, blocking_timeout=wait_s, sleep=0.02,
                           thread_local=False)  # renewed from another thread
    if not lock.acquire():
        raise TimeoutError(f"{name} stayed locked for {wait_s} s")
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ALIVE_TTL_S / 4):
            try:
                lock.reacquire()
            except Exception as exc:  # Redis down: the lock lapses, the write goes on
                log.warning("could not renew %s: %s", name, exc)

    renewer = threading.Thread(target=renew, name="bulk-write-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        try:
            lock.release()
        except Exception as exc:  # it lapsed (Redis was away): nothing to release
            log.warning("%s: %s", name, exc)


def active_key(key: str) -> str:
    return f"{PREFIX}active:{key}"


def active_run(connection: redis.Redis, key: str) -> BulkRun | None:
    """The run of `key` that has not ended, if any."""
    run_id = _text(connection.get(active_key(key)))
    if not run_id:
        return None
    run = BulkRun(connection, run_id)
    try:
        state = run.info()["state"]
    except KeyError:
        return None
    return run if state in ("planning", "predicting") else None


def live_shards(run: BulkRun) -> list[str]:
    return [as_text(k).rsplit(":", 1)[-1] for k in
            run.connection.scan_iter(f"{run.info_key}:alive:*")]


class _Heartbeat:
    def __init__(self, run: BulkRun, shard: str):
        self.run, self.shard = run, shard
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="bulk-heartbeat", daemon=True)

    def _loop(self) -> None:
        planner = f"{self.run.info_key}:planner"
        while not self.stop.wait(ALIVE_TTL_S / 4):
            try:
                self.run.beat(self.shard)
                if _text(self.run.connection.get(planner)) == self.shard:
                    self.run.connection.expire(planner, ALIVE_TTL_S)  # a live planner keeps it
            except redis.RedisError as exc:
                log.warning("bulk heartbeat failed: %s", exc)

    def __enter__(self) -> _Heartbeat:
        self.run.beat(self.shard)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.run.connection.delete(f"{self.run.info_key}:alive:{self.shard}")


def _drain(steps: Iterator[None]) -> None:
    for _ in steps:
        pass


def run_shard(run: BulkRun, shard: str, planner: Planner, handler: ChunkHandler, *,
              progress: Callable[[dict[str, Any]], None] | None = None,
              poll_s: float = 0.5) -> dict[str, Any]:
    """Work on `run` until every chunk is done: plan if nobody has, claim chunks, take over
    those of stopped shards. Returns the run's progress and this shard's own counts."""
    mine = [0]
    report = progress or (lambda _: None)
    pending: list[tuple[str, int, Future[ChunkOutcome]]] = []  # chunks being written, oldest

    def settle() -> None:
        cid, count, writing = pending.pop(0)
        if run.complete(shard, cid, writing.result(), count):
            mine[0] += count
        report({"phase": "predicting", **run.progress(), "shard_done": mine[0]})

    listing: list[Future[None]] = []  # this shard lists the items, beside its predictions
    with _Heartbeat(run, shard), ThreadPoolExecutor(1, thread_name_prefix="bulk-write") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="bulk-list") as lister:
        while True:
            state = run.info()["state"]
            if state in ("failed", "finished"):
                break
            if state == "planning" and not listing:
                steps = run.planning(planner, shard)
                if steps is not None:
                    listing.append(lister.submit(_drain, steps))
            if listing and listing[0].done():
                listing[0].result()  # the listing's error, if any, ends the shard
            claimed = run.claim(shard)
            if claimed is not None:
                cid, items = claimed
                predicted = handler.predict(items)
                while len(pending) >= MAX_WRITES_BEHIND:
                    settle()
                recheck = partial(run.needs_recheck, shard, cid)
                pending.append((cid, len(items), pool.submit(handler.write, predicted,
                                                              recheck)))
                continue
            if pending:
                settle()
                continue
            if state == "planning":  # the first chunks are being listed
                time.sleep(min(poll_s, 0.05) if listing else poll_s)
                continue
            if run.reclaim_dead():
                continue
            if run.outstanding() == 0:
                run.finish()
                break
            time.sleep(poll_s)  # others hold the last chunks: take them over if they stop
    final = run.progress()
    report({"phase": "done" if final["state"] == "finished" else final["state"], **final,
            "shard_done": mine[0]})
    return {**final, "shard_done": mine[0], "failures": run.failures()}


def progress_line(meta: Mapping[str, Any]) -> str:
    """How `labelpilot jobs` shows a bulk prediction: "predicted 700/2004 (41.2 tasks/s,
    ETA 31 s)"."""
    rate = meta.get("rate")
    eta = meta.get("eta_s")
    speed = f"{rate} tasks/s" if rate else "starting"
    ends = f", ETA {eta:.0f} s" if isinstance(eta, int | float) and meta.get(
        "phase") == "predicting" else ""
    failed = f", {meta['failed']} failed" if meta.get("failed") else ""
    verb = "predicted" if meta.get("phase") == "predicting" else str(meta.get("phase"))
    return f"{verb} {meta.get('done')}/{meta.get('total')} ({speed}{ends}{failed})"


def job_progress(connection: redis.Redis, meta: Mapping[str, Any]) -> str:
    """A shard job's line in `labelpilot jobs`: the run's progress now (a killed shard's own
    meta stops where it died), else what the job last wrote."""
    if meta.get("run"):
        try:
            live = BulkRun(connection, str(meta["run"])).progress()
        except KeyError:
            return progress_line(meta)
        phase = "predicting" if live["state"] in ("planning", "predicting") else live["state"]
        return progress_line({**live, "phase": phase})
    return progress_line(meta)
