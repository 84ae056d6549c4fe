"""Coalescing of training requests on real Redis + RQ (no worker: jobs stay queued)."""

from __future__ import annotations

import uuid

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from labelpilot.trainers import queue
from labelpilot.trainers.pipeline import TrainParams, gate
from labelpilot.trainers.settings import load_params, save_params

FUNC = "labelpilot.jobs.train_label_studio"


@pytest.fixture()
def conn(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def request(conn: redis.Redis, key: str, n: int = 1) -> list[queue.Enqueued]:
    return [queue.request_training(conn, key, FUNC, {"project_id": 0}, {"event": "test"})
            for _ in range(n)]


def test_a_burst_of_200_requests_makes_one_job(conn):
    key = f"test-{uuid.uuid4().hex[:8]}"
    answers = request(conn, key, 200)
    assert answers[0].outcome == "enqueued"
    assert {a.outcome for a in answers[1:]} == {"coalesced"}
    assert len({a.job_id for a in answers}) == 1
    job = Job.fetch(answers[0].job_id, connection=conn)
    assert queue.coalesced_count(conn, job.id) == 199 and job.meta["key"] == key
    assert job.get_status() == JobStatus.QUEUED
    job.cancel()


def test_requests_during_training_queue_exactly_one_follow_up(conn):
    key = f"test-{uuid.uuid4().hex[:8]}"
    (first,) = request(conn, key)
    job = Job.fetch(first.job_id, connection=conn)
    Queue(queue.QUEUE_NAME, connection=conn).remove(job)
    job.set_status(JobStatus.STARTED)  # what a worker does when it picks the job up
    queue.mark_started(conn, key, job.id)
    during = request(conn, key, 50)
    assert during[0].outcome == "follow-up"
    assert {a.outcome for a in during[1:]} == {"coalesced"}
    follow_up = Job.fetch(during[0].job_id, connection=conn)
    assert follow_up.get_status() == JobStatus.DEFERRED  # waits for the running one
    assert follow_up.dependency_ids == [job.id]
    listed = queue.jobs(conn, key)
    assert {j["id"] for j in listed} == {job.id, follow_up.id}
    assert {j["status"] for j in listed} == {"started", "deferred"}
    queue.mark_finished(conn, key, job.id)
    assert [j["id"] for j in queue.jobs(conn, key)] == [follow_up.id]
    follow_up.cancel()


def test_settings_round_trip_and_validation(conn):
    project = f"ls-test-{uuid.uuid4().hex[:6]}"
    assert load_params(conn, project) == TrainParams()
    saved = save_params(conn, project, epochs=7, promotion="manual", imgsz=None)
    assert (saved.epochs, saved.promotion, saved.imgsz) == (7, "manual", TrainParams().imgsz)
    assert load_params(conn, project) == saved
    with pytest.raises(ValueError, match="promotion"):
        save_params(conn, project, promotion="sometimes")


@pytest.mark.parametrize("params, candidate, current, promote", [
    (TrainParams(), {"map50_95": 0.5}, None, True),
    (TrainParams(), {"map50_95": 0.5}, {"map50_95": 0.4}, True),
    (TrainParams(margin=0.2), {"map50_95": 0.5}, {"map50_95": 0.4}, False),
    (TrainParams(), {"map50_95": 0.3}, {"map50_95": 0.4}, False),
    (TrainParams(promotion="manual"), {"map50_95": 0.9}, {"map50_95": 0.1}, False),
    (TrainParams(), None, None, False),
])
def test_promotion_gate(params, candidate, current, promote):
    assert gate(params, candidate, current)["promote"] is promote


@pytest.mark.parametrize("params, candidate, classes, promote", [
    (TrainParams(), {"map50_95": 0.0, "map50": 0.0}, 3, False),  # finds nothing: never serves
    (TrainParams(), {"map50_95": 0.01, "map50": 0.049}, 3, False),
    (TrainParams(), {"map50_95": 0.02, "map50": 0.05}, 3, True),
    (TrainParams(first_version_floor=0.3), {"map50_95": 0.1, "map50": 0.25}, 3, False),
    (TrainParams(first_version_floor=0.0), {"map50_95": 0.0, "map50": 0.0}, 3, True),
    # classify: top-1 accuracy above chance (1/3 here, 1/2 with two classes)
    (TrainParams(), {"accuracy_top1": 0.36, "accuracy_top5": 1.0}, 3, False),
    (TrainParams(), {"accuracy_top1": 0.40, "accuracy_top5": 1.0}, 3, True),
    (TrainParams(), {"accuracy_top1": 0.52, "accuracy_top5": 1.0}, 2, False),
])
def test_a_first_version_is_promoted_only_above_the_floor(params, candidate, classes, promote):
    decision = gate(params, candidate, None, class_count=classes)
    assert decision["promote"] is promote
    if not promote:
        assert "below the floor" in decision["reason"]
        assert "waiting for an admin" in decision["reason"]


def test_the_first_version_floor_is_a_project_setting(conn):
    project = f"ls-test-{uuid.uuid4().hex[:6]}"
    assert load_params(conn, project).first_version_floor == 0.05
    assert save_params(conn, project, first_version_floor=0.2).first_version_floor == 0.2
    assert load_params(conn, project).first_version_floor == 0.2
    with pytest.raises(ValueError, match="first_version_floor"):
        save_params(conn, project, first_version_floor=1.5)


def test_a_job_whose_heartbeat_stopped_is_failed_and_its_follow_up_released(conn):
    key = f"test-{uuid.uuid4().hex[:8]}"
    (first,) = request(conn, key)
    job = Job.fetch(first.job_id, connection=conn)
    Queue(queue.QUEUE_NAME, connection=conn).remove(job)
    job.set_status(JobStatus.STARTED)
    queue.mark_started(conn, key, job.id)  # also the first heartbeat
    (follow_up,) = request(conn, key)
    assert follow_up.outcome == "follow-up"
    assert queue.reap_dead(conn, key) is None  # alive
    conn.delete(f"labelpilot:train:alive:{key}")  # heartbeat expired: the process was killed
    listed = {j["id"]: j for j in queue.jobs(conn, key)}
    assert listed[job.id]["status"] == "failed"
    assert "heartbeats" in listed[job.id]["meta"]["error"]
    assert Job.fetch(follow_up.job_id, connection=conn).get_status() == JobStatus.QUEUED
    Job.fetch(follow_up.job_id, connection=conn).cancel()


def test_a_stalled_training_that_was_retried_elsewhere_writes_nothing(conn):
    """A worker that stalls past the heartbeat limit (not killed) is reaped and retried; when
    it wakes up its heartbeat must not revive it and it must not write a second version."""
    key = f"test-{uuid.uuid4().hex[:8]}"
    (first,) = request(conn, key)
    stalled = Job.fetch(first.job_id, connection=conn)
    Queue(queue.QUEUE_NAME, connection=conn).remove(stalled)
    stalled.set_status(JobStatus.STARTED)
    queue.mark_started(conn, key, stalled.id)
    queue.require_running(conn, key, stalled.id)  # still the running one: may write
    conn.delete(f"labelpilot:train:alive:{key}")  # its heartbeats stopped for ALIVE_TTL_S
    assert queue.reap_dead(conn, key) == stalled.id
    retry = Job.fetch(Job.fetch(stalled.id, connection=conn).meta["retried_as"],
                      connection=conn)
    Queue(queue.QUEUE_NAME, connection=conn).remove(retry)
    retry.set_status(JobStatus.STARTED)
    queue.mark_started(conn, key, retry.id)
    assert queue.heartbeat(conn, key, stalled.id) is False  # wakes up: taken over
    assert conn.get(f"labelpilot:train:alive:{key}") == retry.id.encode()
    with pytest.raises(queue.TrainingTakenOver, match="writes no version"):
        queue.require_running(conn, key, stalled.id)
    assert queue.heartbeat(conn, key, retry.id) is True
    queue.require_running(conn, key, retry.id)
    assert queue.reap_dead(conn, key) is None  # the retry is alive
    queue.mark_finished(conn, key, retry.id)
