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
    check-and-write under the run's lock); `reached` counts every item a write was asked for."""

    def __init__(self) -> None:
        self.store: dict[int, int] = {}
        self.reached: dict[int, int] = {}
        self.lock = threading.Lock()

    def predict(self, items: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
        return items

    def write(self, items: Sequence[dict[str, Any]]) -> ChunkOutcome:
        outcome = ChunkOutcome()
        with self.lock:
            for item in items:
                self.reached[item["id"]] = self.reached.get(item["id"], 0) + 1
                if item["data"] == "bad":
                    outcome.failed.append({"item": item["id"], "reason": "bad image"})
                elif item["id"] in self.store:
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
    assert set(sink.reached.values()) == {1}  # every item listed into one chunk, done once
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
    dead = {int(i["id"]) for i in claimed[1]}
    assert {i for i, n in sink.reached.items() if n == 2} == dead  # done again, written once
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


def chunk_ids(run: BulkRun) -> list[int]:
    import json

    return [int(i["id"]) for raw in run.connection.hvals(run.chunks_key)
            for i in json.loads(raw)]


def test_the_same_items_pushed_by_two_planners_land_in_one_chunk(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    run = BulkRun.create(connection, "predict-test-3", {}, total=400, chunk_size=10)
    items = [{"id": i, "data": "ok"} for i in range(400)]
    pushed: list[int] = []

    def planner_pushes(order: list[dict[str, Any]]) -> None:
        mine = BulkRun(redis.Redis.from_url(redis_url), run.id)
        for n in range(0, len(order), 10):
            pushed.append(mine._push(order[n:n + 10]))

    planners = [threading.Thread(target=planner_pushes, args=(order,))
                for order in (items, items[::-1], items[200:] + items[:200])]
    for t in planners:
        t.start()
    for t in planners:
        t.join(60)
    ids = chunk_ids(run)
    assert sorted(ids) == list(range(400))  # each id in exactly one chunk
    assert sum(pushed) == 400 and run.info()["chunks"] == sum(1 for n in pushed if n)
    assert run._push(items[:10]) == 0 and len(chunk_ids(run)) == 400  # nothing new: no chunk


def test_one_planner_at_a_time_and_a_dead_ones_lock_is_taken_once(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    run = BulkRun.create(connection, "predict-test-4", {}, total=30, chunk_size=10)
    connection.set(run.planner_key, "dead", ex=10)  # its heartbeat lapsed: not alive
    first = run.planning(planner(30, set()), "a")
    assert first is not None
    run.beat("a")
    assert run.planning(planner(30, set()), "b") is None  # "a" lives
    # two shards that both saw "dead": only the first compare-and-set wins
    connection.set(run.planner_key, "dead", ex=10)
    assert run._take_planner(keys=[run.planner_key], args=["dead", "b", 10]) == 1
    assert run._take_planner(keys=[run.planner_key], args=["dead", "c", 10]) == 0
    assert list(first) == []  # "a" sees the lock went to "b" before its first item: it stops
    assert run.info()["state"] == "planning" and run.info()["chunks"] == 0
    connection.delete(run.planner_key)
    assert run.plan(planner(30, set()), "b")
    assert sorted(chunk_ids(run)) == list(range(30)) and run.info()["state"] == "predicting"


class FailsOnce(Written):
    """A write whose first call meets a transient error (LS restarting)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_once = False

    def write(self, items: Sequence[dict[str, Any]]) -> ChunkOutcome:
        if not self.failed_once:
            self.failed_once = True
            raise ConnectionError("Label Studio restarting")
        return super().write(items)


def test_a_transient_error_stops_one_shard_and_its_retry_rejoins(redis_url: str) -> None:
    import pytest

    from labelpilot import jobs
    from labelpilot.adapters.label_studio.client import LabelStudioApiError

    connection = redis.Redis.from_url(redis_url)
    run = BulkRun.create(connection, "predict-test-5", {}, total=30, chunk_size=10)
    sink = FailsOnce()
    with pytest.raises(ConnectionError) as error:
        run_shard(run, "job-1", planner(30, set()), sink, poll_s=0.05)
    jobs._shard_failed(run, "job-1", error.value)
    assert run.info()["state"] in ("planning", "predicting") and not run.alive("job-1")
    assert connection.hlen(run.claims_key) >= 1  # the stopped try's chunks, still claimed
    result = run_shard(run, "job-1", planner(30, set()), sink, poll_s=0.05)  # RQ's retry
    assert result["state"] == "finished" and result["done"] == 30
    # a chunk the stopped try wrote but did not count is found present, not written twice
    assert result["written"] + result["present"] == 29 and result["failed"] == 1
    assert sorted(sink.store) == [i for i in range(30) if i != 7]

    other = BulkRun.create(connection, "predict-test-6", {}, total=1, chunk_size=10)
    jobs._shard_failed(other, "job-2", LabelStudioApiError("no project 3", status=404))
    assert other.info()["state"] == "failed"
    assert other.info()["error"] == "LabelStudioApiError: no project 3"


def test_a_bad_shard_count_is_refused_before_any_run_is_made(redis_url: str,
                                                             monkeypatch) -> None:
    import pytest

    from labelpilot.predict_command import (
        PredictCommandError,
        PredictOptions,
        run_predict_command,
    )
    from labelpilot.settings import load_settings
    from labelpilot.trainers.bulk_run import active_key

    monkeypatch.setenv("REDIS_URL", redis_url)
    connection = redis.Redis.from_url(redis_url)
    connection.delete(active_key("predict-cvat-task-404"))
    for shards in (0, 17):
        with pytest.raises(PredictCommandError, match=f"--shards must be 1..16, not {shards}"):
            run_predict_command(load_settings(), ls_project=None, cvat_task=404,
                                options=PredictOptions(shards=shards))
    assert not connection.exists(active_key("predict-cvat-task-404"))


class CappedTasks:
    """Label Studio's /api/tasks answering at most 2 tasks a page, as a capped page size does
    (the real LS serves a chunk in one page; this checks the paging and the count)."""

    def __init__(self, tasks: dict[int, list[str]]) -> None:
        self.tasks = tasks
        self.calls = 0

    def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        import json

        self.calls += 1
        asked = json.loads(params["query"])["selectedItems"]["included"]
        present = [t for t in asked if t in self.tasks]
        page = present[2 * (params["page"] - 1):2 * params["page"]]
        return {"total": len(present), "tasks": [
            {"id": t, "predictions": [{"model_version": v} for v in self.tasks[t]]}
            for t in page]}


def test_versions_held_pages_through_and_names_deleted_tasks() -> None:
    import pytest

    from labelpilot.adapters.label_studio.bulk_predict import TasksGone, versions_held

    api = CappedTasks({1: ["v1"], 2: [], 3: ["v0", "v1"], 4: ["v0"], 5: ["v1"]})
    assert versions_held(api, 3, [1, 2, 3, 4, 5], "v1") == {1, 3, 5}  # type: ignore[arg-type]
    assert api.calls == 3
    with pytest.raises(TasksGone, match=r"tasks \[99\] are no longer") as gone:
        versions_held(api, 3, [1, 2, 99], "v1")  # type: ignore[arg-type]
    assert gone.value.task_ids == {99}
