"""The bulk run's bookkeeping in a real Redis: chunks claimed once, a stopped shard's chunk taken
over, a chunk done twice counted once, progress with rate and ETA."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis

from labelpilot.trainers import bulk_run
from labelpilot.trainers.bulk_run import BulkRun, ChunkOutcome, progress_line, run_shard


class Written:
    """Writes items into a dict, skipping those present (the idempotence LS gets from its
    check-and-write under the run's lock)."""

    def __init__(self) -> None:
        self.store: dict[int, int] = {}
        self.checks: list[bool] = []
        self.lock = threading.Lock()

    def predict(self, items: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
        return items

    def write(self, items: Sequence[dict[str, Any]], recheck=lambda: True  # type: ignore[no-untyped-def]
              ) -> ChunkOutcome:
        outcome = ChunkOutcome()
        with self.lock:
            check = recheck()
            self.checks.append(check)
            for item in items:
                if item["data"] == "bad":
                    outcome.failed.append({"item": item["id"], "reason": "bad image"})
                elif check and item["id"] in self.store:
                    outcome.present += 1
                elif item["id"] in self.store:
                    self.store[item["id"]] += 1  # written twice: the test fails
                    outcome.present += 1
                else:
                    self.store[item["id"]] = 1
                    outcome.written += 1
        return outcome


def planner(count: int, held: set[int]):  # type: ignore[no-untyped-def]
    def items():  # type: ignore[no-untyped-def]
        for i in range(count):
            item = {"id": i, "data": "bad" if i == 7 else "ok"}
            yield item, ("holds this model version" if i in held else None)

    return items


def test_two_shards_share_a_run_and_count_every_item_once(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    run = BulkRun.create(connection, "predict-test-1", {"x": 1}, total=103, chunk_size=10)
    sink = Written()
    results: list[dict[str, Any]] = []
    shards = [threading.Thread(target=lambda n=n: results.append(run_shard(
        run, f"s{n}", planner(103, {0, 1}), sink, poll_s=0.05))) for n in range(2)]
    for t in shards:
        t.start()
    for t in shards:
        t.join(60)
    info = run.progress()
    assert info["state"] == "finished" and info["done"] == 103 == info["total"]
    assert info["written"] == 100 and info["left_out"] == 2 and info["failed"] == 1
    assert sorted(sink.store) == [i for i in range(103) if i not in (0, 1, 7)]
    assert set(sink.store.values()) == {1} and not any(sink.checks)  # no chunk needed one
    assert run.failures() == [{"item": 7, "reason": "bad image"}]
    assert sum(r["shard_done"] for r in results) == 101
    assert "finished 103/103" in progress_line({**info, "phase": "finished"})


def test_a_stopped_shards_chunk_is_taken_over_and_counted_once(redis_url: str,
                                                               monkeypatch) -> None:
    monkeypatch.setattr(bulk_run, "ALIVE_TTL_S", 1)
    connection = redis.Redis.from_url(redis_url)
    run = BulkRun.create(connection, "predict-test-2", {}, total=30, chunk_size=10)
    run.plan(planner(30, set()), "dead")
    claimed = run.claim("dead")  # the dead shard wrote its chunk, then was killed
    assert claimed is not None
    sink = Written()
    sink.write(claimed[1])
    run.beat("dead")
    mid = run.progress()
    assert mid["state"] == "predicting" and mid["done"] == 0 and mid["eta_s"] is None
    result = run_shard(run, "alive", planner(30, set()), sink, poll_s=0.05)
    assert sink.checks[1:] == [False, False, True]  # only the chunk taken over is checked
    assert set(sink.store.values()) == {1}
    assert result["state"] == "finished" and result["done"] == 30
    assert result["written"] == 20 and result["present"] == 9 and result["failed"] == 1
    # the dead shard's late completion (it was only slow) is not counted twice
    assert not run.complete("dead", claimed[0], ChunkOutcome(written=10), 10)
    assert run.progress()["done"] == 30 and run.progress()["rate"] is not None


def test_the_write_lock_lives_with_its_holder(redis_url: str, monkeypatch) -> None:
    import time

    monkeypatch.setattr(bulk_run, "ALIVE_TTL_S", 1)
    connection = redis.Redis.from_url(redis_url)
    name = "labelpilot:bulk:write:test"
    connection.delete(name)
    with bulk_run.write_lock(connection, name):
        time.sleep(1.6)  # longer than its TTL: renewed while held
        assert connection.exists(name)
    assert not connection.exists(name)
    connection.lock(name, timeout=1).acquire()  # a writer killed while holding it
    with bulk_run.write_lock(connection, name, wait_s=3):  # TimeoutError if it outlived
        assert connection.exists(name)  # its holder by more than the TTL
