"""A quality scan of a CVAT task: cvat-sdk talks real HTTP to a stand-in for CVAT's REST API
(`tests.fake_cvat`); findings become "quality:<finding>" tags on the frames, placed once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import cv2
import pytest
import redis

from bench.quality import good_images, variants
from labelpilot.adapters.cvat.scan import CvatScan, tag_names
from labelpilot.backends.quality import QualityThresholds
from labelpilot.backends.quality_ledger import QualityLedger
from labelpilot.trainers.scan import run_scan
from tests.fake_cvat import FakeCvat, FakeTask, serve

JOBS = [{"id": 21, "task_id": 5, "start_frame": 0, "stop_frame": 4, "type": "annotation"}]


def frames() -> list[bytes]:
    good = good_images(("astronaut", "coins"))
    images = [good["astronaut"], good["coins"], variants(good["coins"])["dark"], good["astronaut"]]
    encoded = [cv2.imencode(".png", im)[1].tobytes() for im in images]
    return [*encoded, b"not a png"]


@pytest.fixture()
def cvat() -> Iterator[tuple[FakeCvat, str]]:
    fake = FakeCvat()
    labels = [{"id": 1, "name": "person", "type": "rectangle"}]
    labels += [{"id": 100 + i, "name": name, "type": "tag"} for i, name in enumerate(tag_names())]
    fake.add_task(FakeTask(5, "frames", frames(), [f"{i}.png" for i in range(5)], labels, JOBS))
    fake.add_task(FakeTask(6, "no tag labels", frames()[:1], ["0.png"], labels[:1], []))
    with serve(fake) as url:
        yield fake, url


def test_findings_become_tags_on_the_frames_once(cvat, redis_url: str) -> None:
    from labelpilot.adapters.cvat.client import CvatAccess, cvat_client

    fake, url = cvat
    connection = redis.Redis.from_url(redis_url)
    QualityLedger(connection).forget("cvat-task-5")
    scan = CvatScan(cvat_client(CvatAccess(url=url, token="pat")), 5)
    result = run_scan(
        scan.key,
        scan.items(),
        scan,
        connection,
        QualityThresholds(),
        max_pixels=10**8,
        total=scan.total,
    )
    assert result["scanned"] == 5 and result["flagged"] == 3
    names = {label["id"]: label["name"] for label in fake.tasks[5].labels}
    tags = sorted((t["frame"], names[t["label_id"]]) for t in fake.tasks[5].annotations["tags"])
    # frame 2 is the coins photo darkened: dark, and by its hash the same picture as frame 1
    assert tags == [
        (2, "quality:dark"),
        (2, "quality:duplicate"),
        (3, "quality:duplicate"),
        (4, "quality:corrupt"),
    ]
    assert result["tagged"] == 4

    again = CvatScan(cvat_client(CvatAccess(url=url, token="pat")), 5)
    run_scan(
        again.key,
        again.items(),
        again,
        connection,
        QualityThresholds(),
        max_pixels=10**8,
        total=again.total,
    )
    assert len(fake.tasks[5].annotations["tags"]) == 4, "no tag placed twice"
    assert QualityLedger(connection).counts("cvat-task-5")["checked"] == 5


def test_a_task_without_the_tag_labels_is_a_clear_error(cvat) -> None:
    from labelpilot.adapters.cvat.client import CvatAccess, cvat_client

    _, url = cvat
    with pytest.raises(ValueError, match="no tag labels quality:corrupt.*add them"):
        CvatScan(cvat_client(CvatAccess(url=url, token="pat")), 6)


def test_the_scan_command_tags_a_cvat_task(cvat, redis_url: str) -> None:
    from tests.helpers import run_cvat_cli

    fake, url = cvat
    QualityLedger(redis.Redis.from_url(redis_url)).forget("cvat-task-5")
    out = run_cvat_cli(url, {"REDIS_URL": redis_url}, "scan", "--cvat-task", "5", "--wait")
    assert out.returncode == 0, out.stderr
    assert "scanned 5 images" in out.stdout and "3 with findings (4 CVAT tags)" in out.stdout
    assert len(fake.tasks[5].annotations["tags"]) == 4
    refused = run_cvat_cli(url, {"REDIS_URL": redis_url}, "scan", "--cvat-task", "6", "--wait")
    assert refused.returncode == 2 and "cannot scan: CVAT task 6 has no tag labels" in (
        refused.stderr
    ), refused.stderr
    missing = run_cvat_cli(url, {"REDIS_URL": redis_url}, "scan", "--cvat-task", "99", "--wait")
    assert missing.returncode == 2 and "CVAT answered 404" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr + refused.stderr


class WatchedScan(CvatScan):
    """The CVAT sink, noting the RQ job's progress meta each time it publishes."""

    seen: ClassVar[list[dict]] = []

    def publish(self, scanned):  # type: ignore[no-untyped-def]
        from rq import get_current_job

        job = get_current_job()
        WatchedScan.seen.append(dict(job.meta) if job else {})
        return super().publish(scanned)


def scan_in_a_job(url: str) -> dict:
    """An RQ job body: the scan of task 5 (what `labelpilot.jobs.scan_cvat` runs)."""
    from rq import get_current_job

    from labelpilot.adapters.cvat.client import CvatAccess, cvat_client

    job = get_current_job()
    assert job is not None, "runs inside an RQ job"
    scan = WatchedScan(cvat_client(CvatAccess(url=url, token="pat")), 5)
    return run_scan(
        scan.key,
        scan.items(),
        scan,
        job.connection,
        QualityThresholds(),
        max_pixels=10**8,
        total=scan.total,
    )


def test_a_queued_scan_reports_its_progress_in_the_job_meta(cvat, redis_url: str) -> None:
    from rq import Queue, SimpleWorker
    from rq.job import Job

    from labelpilot.trainers import queue as training_queue
    from labelpilot.trainers.scan import scan_key
    from tests.helpers import run_cli

    _, url = cvat
    connection = redis.Redis.from_url(redis_url)
    QualityLedger(connection).forget("cvat-task-5")
    queued = training_queue.request_training(
        connection,
        scan_key("cvat-task-5"),
        "tests.test_scan_cvat.scan_in_a_job",
        {"url": url},
        {"event": "test"},
    )
    SimpleWorker(
        [Queue(training_queue.QUEUE_NAME, connection=connection)], connection=connection
    ).work(burst=True)
    job = Job.fetch(queued.job_id, connection=connection)
    assert job.get_status() == "finished", job.exc_info
    assert WatchedScan.seen[0]["phase"] == "scanning"
    assert WatchedScan.seen[0]["total"] == 5 and 1 <= WatchedScan.seen[0]["done"] <= 5
    assert job.meta["phase"] == "done" and job.meta["scan_flagged"] == 3
    listed = run_cli("jobs", "--key", "scan-cvat-task-5", env={"REDIS_URL": redis_url})
    assert "finished   done -> 3 with quality findings" in listed.stdout, listed.stdout
    assert job.return_value()["summary"].startswith("5 images scanned, 3 with findings")
