"""Label errors become CVAT issues: cvat-sdk talks real HTTP to a stand-in for CVAT's REST API
(`tests.fake_cvat`: paginated /api/jobs and /api/issues lists, POST /api/issues)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from labelpilot.adapters.cvat.review import ISSUE_PREFIX, CvatReview
from labelpilot.backends.shapes import BBox, Instance
from labelpilot.trainers.label_errors import (
    LabelErrorReport,
    SampleFindings,
    image_score,
    score_sample,
)
from labelpilot.trainers.samples import Sample
from tests.fake_cvat import FakeCvat, FakeTask, serve

JOBS = [  # task 3: two annotation jobs and a ground-truth job over the same frames
    {"id": 11, "task_id": 3, "start_frame": 0, "stop_frame": 4, "type": "annotation"},
    {"id": 12, "task_id": 3, "start_frame": 5, "stop_frame": 9, "type": "annotation"},
    {"id": 13, "task_id": 3, "start_frame": 0, "stop_frame": 9, "type": "ground_truth"},
]


@pytest.fixture()
def cvat() -> Iterator[tuple[FakeCvat, str]]:
    fake = FakeCvat()
    fake.add_task(FakeTask(3, "shapes", [b""] * 10, [f"{i}.png" for i in range(10)], [], JOBS))
    with serve(fake) as url:
        yield fake, url


def box(x1: float, y1: float, x2: float, y2: float, name: str, score: float = 1.0) -> Instance:
    return Instance(name, score, box=BBox(x1, y1, x2, y2))


def sample(frame: int, *instances: Instance) -> Sample:
    return Sample(f"cvat-t3-f{frame}", Path(f"/nowhere/{frame}.png"), 100, 100, instances,
                  provenance={"task": "3", "frame": str(frame)})


def report_for(cases: list[tuple[Sample, list[Instance]]]) -> LabelErrorReport:
    checked = []
    for s, predicted in cases:
        findings = tuple(score_sample(s.instances, predicted))
        checked.append(SampleFindings(s.sample_id, image_score(findings), findings))
    checked.sort(key=lambda c: -c.score)
    return LabelErrorReport(tuple(checked), folds=2)


def test_likely_mistakes_become_issues_on_the_right_job_frame_and_region(cvat):
    from labelpilot.adapters.cvat.client import CvatAccess, cvat_client

    fake, url = cvat
    circle = box(10, 10, 40, 40, "circle")
    missing = sample(2, circle)  # the annotator forgot the square
    wrong = sample(7, box(60, 60, 90, 90, "circle"))  # a square labelled circle
    clean = sample(8, circle)
    report = report_for([
        (missing, [box(10, 10, 40, 40, "circle", 0.95), box(60, 60, 90, 90, "square", 0.93)]),
        (wrong, [box(61, 60, 90, 91, "square", 0.9)]),
        (clean, [box(10, 11, 40, 40, "circle", 0.96)]),
    ])
    review = CvatReview(cvat_client(CvatAccess(url=url, token="pat")))
    samples = [missing, wrong, clean]

    result = review.publish(samples, report, threshold=0.5)

    assert result["issues_opened"] == 2
    assert sorted(result["review_frames"]) == ["task 3 frame 2", "task 3 frame 7"]
    by_frame = {i["frame"]: i for i in fake.issues}
    assert by_frame[2]["job"] == 11 and by_frame[7]["job"] == 12  # never the ground-truth job
    assert by_frame[2]["position"] == [60.0, 60.0, 90.0, 90.0]  # where the square is
    assert by_frame[2]["message"].startswith(f"{ISSUE_PREFIX}missing square")
    assert by_frame[7]["position"] == [60.0, 60.0, 90.0, 90.0]  # the mislabelled box
    assert "circle looks like square" in by_frame[7]["message"]
    assert set(by_frame) == {2, 7}, "the clean frame gets no issue"
    assert all(set(i) >= {"frame", "job", "position", "message"} for i in fake.issues)

    # a second run finds its issues open and does not repeat them
    again = CvatReview(cvat_client(CvatAccess(url=url, token="pat")))
    assert again.publish(samples, report, threshold=0.5)["issues_opened"] == 0
    assert len(fake.issues) == 2


def test_a_frame_outside_every_annotation_job_is_a_clear_error(cvat):
    from labelpilot.adapters.cvat.client import CvatAccess, cvat_client

    _, url = cvat
    lost = sample(42, box(10, 10, 40, 40, "circle"))
    report = report_for([(lost, [box(60, 60, 90, 90, "square", 0.9)])])
    review = CvatReview(cvat_client(CvatAccess(url=url, token="pat")))
    with pytest.raises(ValueError, match="no annotation job with frame 42"):
        review.publish([lost], report, threshold=0.5)
