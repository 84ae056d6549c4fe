"""A bulk prediction run shared by several workers: its chunks, claims, heartbeats and
progress live in Redis, whatever platform the items come from.

A run is planned in chunks (lists of items) pushed to a to-do list as the items are listed;
every shard (an RQ job, or `--wait` in the CLI) claims one chunk at a time, predicts it, writes
the predictions and counts it done in one step that only the chunk's current owner can take.
A shard's heartbeat lapses when its worker is killed: another shard puts the chunk back and
does it again. Writing is made idempotent by the platform (`ChunkHandler.write` asks, under
the run's write lock and right before every write, which items hold the run's model version
already, and leaves them out), so a chunk done twice, or an item predicted meanwhile by
someone else (a user opening the task), is written once.

Planning is one planner at a time (a lock taken over only from a planner whose heartbeat
lapsed, by compare-and-set), and an item goes into a chunk only when its id is added to the
run's listed set in the same atomic step, so no item is listed into two chunks.
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
_TAKE_PLANNER = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"""
_KEEP_PLANNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
_END_PLANNING = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'state', 'predicting')
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
redis.call('DEL', KEYS[1])
return 1
"""
_PUSH = """
local kept = {}
for i = 3, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then table.insert(kept, ARGV[i + 1]) end
end
if #kept == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], '[' .. table.concat(kept, ',') .. ']')
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'chunks', 1)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
return #kept
"""
_LEAVE_OUT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'left_out', 1)
redis.call('HINCRBY', KEYS[2], 'done', 1)
return 1
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

    def write(self, predicted: Any) -> ChunkOutcome:
        """Write under the platform's write lock; inside it, right before writing, leave out
        the items that hold the version already (one request per chunk)."""
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
        self._take_planner = connection.register_script(_TAKE_PLANNER)
        self._keep_planner = connection.register_script(_KEEP_PLANNER)
        self._end_planning = connection.register_script(_END_PLANNING)
        self._push_items = connection.register_script(_PUSH)
        self._leave_out = connection.register_script(_LEAVE_OUT)

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
        lock = self.planner_key
        if not self.connection.set(lock, shard, nx=True, ex=ALIVE_TTL_S):
            holder = _text(self.connection.get(lock))
            if holder and holder != shard and self.alive(holder):
                return None
            # SET only if the lock still holds the holder seen dead (or this shard, retried):
            # two shards that saw it dead at once cannot both take it
            if not self._take_planner(keys=[lock], args=[holder or "", shard, ALIVE_TTL_S]):
                return None
        return self._planning(planner, shard, lock)

    @property
    def planner_key(self) -> str:
        return f"{self.info_key}:planner"

    def keep_planner(self, shard: str) -> bool:
        """Refresh the planner lock while `shard` holds it; False once another took it."""
        return bool(self._keep_planner(keys=[self.planner_key], args=[shard, ALIVE_TTL_S]))

    def _planning(self, planner: Planner, shard: str, lock: str) -> Iterator[None]:
        size = int(self.info()["chunk_size"])
        pending: list[dict[str, Any]] = []
        for item, left_out in planner():
            if not self.keep_planner(shard):
                log.warning("bulk run %s: shard %s lost the planner lock, stops listing",
                            self.id, shard)
                return
            if self.connection.sismember(self.planned_key, str(item["id"])):
                continue  # listed by an earlier planner (only saves work: `_push` decides)
            if left_out is not None:
                self._leave_out(keys=[self.planned_key, self.info_key], args=[str(item["id"])])
                continue
            pending.append(item)
            if len(pending) >= size:
                self._push(pending)
                pending = []
                yield
        if pending:
            self._push(pending)
        if not self._end_planning(keys=[lock, self.info_key, self.planned_key],
                                  args=[shard, RUN_TTL_S]):
            log.warning("bulk run %s: shard %s lost the planner lock at the end", self.id, shard)

    def _push(self, items: list[dict[str, Any]]) -> int:
        """One chunk of the items no planner listed yet: each id is added to the listed set
        and only those it was new to go into the chunk, in one atomic step. How many."""
        args: list[Any] = [uuid.uuid4().hex[:12], RUN_TTL_S]
        for item in items:
            args += [str(item["id"]), json.dumps(item)]
        return int(self._push_items(
            keys=[self.planned_key, self.chunks_key, self.todo_key, self.info_key], args=args))

    # -- shards -------------------------------------------------------------------------

    def beat(self, shard: str) -> None:
        self.connection.set(f"{self.info_key}:alive:{shard}", 1, ex=ALIVE_TTL_S)

    def stop_beating(self, shard: str) -> None:
        """`shard` stopped: its chunks are taken over by the others (`reclaim_dead`)."""
        self.connection.delete(f"{self.info_key}:alive:{shard}")

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

    def release_own(self, shard: str) -> int:
        """Put back the chunks claimed under `shard`'s name by an earlier try of it (an RQ
        retry has the same job id): this try does not hold them. How many."""
        back = 0
        for cid, owner in self.connection.hgetall(self.claims_key).items():
            if as_text(owner) == shard:
                back += int(self._release(
                    keys=[self.claims_key, self.todo_key, self.retried_key],
                    args=[as_text(cid), shard]))
        return back

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


LOCK_POLL_S = 0.02  # how often a writer waiting for the write lock tries it
_released: dict[str, float] = {}  # write lock name -> when this process last released it
_released_guard = threading.Lock()


def _let_others_in(name: str) -> None:
    """A writer that released the lock a moment ago waits a few polls before taking it again,
    so the other shards' writers (polling every LOCK_POLL_S) get their turn: the lock is not
    fair, and a shard whose next write is already queued would otherwise take it every time
    (its writes behind, the other shards' never counted)."""
    with _released_guard:
        since = time.monotonic() - _released.get(name, float("-inf"))
    if since < 5 * LOCK_POLL_S:
        time.sleep(5 * LOCK_POLL_S - since)


@contextmanager
def write_lock(connection: redis.Redis, name: str, wait_s: float = 600.0) -> Iterator[None]:
    """A Redis lock held while its process lives: it lasts ALIVE_TTL_S and is renewed every
    ALIVE_TTL_S / 4, so a writer killed inside frees it as soon as its chunk is taken over
    (a fixed long timeout would stall every other writer for that long)."""
    _let_others_in(name)
    lock = connection.lock(name, timeout=ALIVE_TTL_S, blocking_timeout=wait_s,
                           sleep=LOCK_POLL_S, thread_local=False)  # renewed from another thread
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
        with _released_guard:
            _released[name] = time.monotonic()


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
        while not self.stop.wait(ALIVE_TTL_S / 4):
            try:
                self.run.beat(self.shard)
                self.run.keep_planner(self.shard)  # a live planner keeps it
            except redis.RedisError as exc:
                log.warning("bulk heartbeat failed: %s", exc)

    def __enter__(self) -> _Heartbeat:
        self.run.beat(self.shard)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()  # no beat after the key is gone
        self.run.stop_beating(self.shard)


def _drain(steps: Iterator[None], stop: threading.Event) -> None:
    for _ in steps:
        if stop.is_set():  # the shard failed: another one takes the listing over
            break


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
    if run.release_own(shard):
        log.warning("bulk run %s: shard %s retried, its earlier chunks put back", run.id, shard)
    stop_listing = threading.Event()

    def work(pool: ThreadPoolExecutor, lister: ThreadPoolExecutor) -> None:
        while True:
            state = run.info()["state"]
            if state in ("failed", "finished"):
                return
            if state == "planning" and not listing:  # nobody plans, or the planner stopped
                steps = run.planning(planner, shard)
                if steps is not None:
                    listing.append(lister.submit(_drain, steps, stop_listing))
            if listing and listing[0].done():
                listing.pop().result()  # the listing's error, if any, ends the shard
            claimed = run.claim(shard)
            if claimed is not None:
                cid, items = claimed
                predicted = handler.predict(items)
                while len(pending) >= MAX_WRITES_BEHIND:
                    settle()
                pending.append((cid, len(items), pool.submit(handler.write, predicted)))
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
                return
            time.sleep(poll_s)  # others hold the last chunks: take them over if they stop

    with _Heartbeat(run, shard), ThreadPoolExecutor(1, thread_name_prefix="bulk-write") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="bulk-list") as lister:
        try:
            work(pool, lister)
        finally:
            stop_listing.set()
    final = run.progress()
    report({"phase": "done" if final["state"] == "finished" else final["state"], **final,
            "shard_done": mine[0]})
    return {**final, "shard_done": mine[0], "failures": run.failures()}


def progress_line(meta: Mapping[str, Any]) -> str:
    """How `labelpilot jobs` shows a bulk prediction: "predicted 700/2004 (41.2 tasks/s,
    ETA 31 s)"."""
    rate = meta.get("rate")
    eta = meta.get("eta_s")
    running = meta.get("phase") in ("planning", "predicting")
    parts = [f"{rate} tasks/s" if rate else "starting" if running else ""]
    if isinstance(eta, int | float) and meta.get("phase") == "predicting":
        parts.append(f"ETA {eta:.0f} s")
    if meta.get("failed"):
        parts.append(f"{meta['failed']} failed")
    verb = "predicted" if meta.get("phase") == "predicting" else str(meta.get("phase"))
    detail = ", ".join(part for part in parts if part)
    return f"{verb} {meta.get('done')}/{meta.get('total')}" + (f" ({detail})" if detail else "")


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
