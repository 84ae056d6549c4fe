"""Acceptance rate: region comparison, the Redis ledger, LS result parsing and the webhook."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from labelpilot.adapters.label_studio.acceptance import (
    acceptance_request,
    is_labelpilot_version,
    pick_prediction,
    regions,
)
from labelpilot.adapters.label_studio.payloads import WebhookEvent
from labelpilot.backends.acceptance import AcceptanceLedger, Comparison, Region, compare
from labelpilot.backends.shapes import BBox


def box(
    x1: float, y1: float, x2: float, y2: float, label: str = "car", control: str = "label"
) -> Region:
    return Region(control, label, box=BBox(x1, y1, x2, y2), width=200, height=200)


def test_identical_regions_are_all_kept() -> None:
    predicted = [box(0, 0, 10, 10), box(50, 50, 90, 90, "bus")]
    assert compare(predicted, list(predicted)) == Comparison(2, 2, 0, 0)


def test_kept_added_deleted_counts() -> None:
    predicted = [box(0, 0, 10, 10), box(20, 20, 40, 40), box(100, 100, 150, 150)]
    submitted = [
        box(1, 0, 11, 10),  # moved a little: kept
        box(100, 100, 150, 150),  # untouched: kept
        box(160, 10, 190, 40),
    ]  # new: added; (20,20,40,40) was deleted
    assert compare(predicted, submitted) == Comparison(3, 2, 1, 1)


def test_label_change_is_one_deletion_and_one_addition() -> None:
    assert compare([box(0, 0, 10, 10, "car")], [box(0, 0, 10, 10, "bus")]) == Comparison(1, 0, 1, 1)


def test_iou_threshold_is_inclusive_and_configurable() -> None:
    predicted = [box(0, 0, 10, 10)]
    half = [box(0, 0, 10, 5)]  # IoU exactly 0.5
    shifted = [box(0, 0, 10, 4.9)]  # IoU 0.49
    assert compare(predicted, half).kept == 1
    assert compare(predicted, shifted).kept == 0
    assert compare(predicted, shifted, iou=0.4).kept == 1


def test_one_to_one_matching_prefers_the_best_total() -> None:
    # two predictions over one submitted box: only one can be kept
    predicted = [box(0, 0, 10, 10), box(0, 0, 10, 9)]
    assert compare(predicted, [box(0, 0, 10, 10)]) == Comparison(2, 1, 0, 1)
    # a greedy pick of the best pair (A-X) would leave B unmatched; Hungarian keeps both
    a, b = box(0, 0, 10, 10), box(0, 0, 10, 6)
    x, y = box(0, 0, 10, 8), box(0, 0, 10, 5)
    assert compare([a, b], [x, y]).kept == 2


def test_regions_of_other_controls_never_match() -> None:
    assert compare([box(0, 0, 10, 10)], [box(0, 0, 10, 10, control="other")]).kept == 0


def test_classification_keeps_the_same_choice() -> None:
    predicted = [Region("class", "cat")]
    assert compare(predicted, [Region("class", "cat")]) == Comparison(1, 1, 0, 0)
    assert compare(predicted, [Region("class", "dog")]) == Comparison(1, 0, 1, 1)


def test_empty_sides() -> None:
    assert compare([], []) == Comparison(0, 0, 0, 0)
    assert compare([box(0, 0, 5, 5)], []) == Comparison(1, 0, 0, 1)
    assert compare([], [box(0, 0, 5, 5)]) == Comparison(0, 0, 1, 0)


def test_polygons_masks_and_rotated_shapes_compare_by_area() -> None:
    square = ((10.0, 10.0), (60.0, 10.0), (60.0, 60.0), (10.0, 60.0))
    poly = Region("seg", "car", polygon=square, width=100, height=100)
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:60, 12:62] = True
    brush = Region("seg", "car", mask=mask, width=100, height=100)
    far = np.zeros((100, 100), dtype=bool)
    far[70:95, 70:95] = True
    assert compare([poly], [brush]).kept == 1
    assert compare([brush], [Region("seg", "car", mask=far, width=100, height=100)]).kept == 0
    as_box = Region("seg", "car", box=BBox(10, 10, 60, 60), width=100, height=100)
    assert compare([as_box], [poly]).kept == 1  # a box against a polygon: rasterised


def test_keypoints_compare_by_distance() -> None:
    def point(x: float, y: float) -> Region:
        return Region("kp", "nose", point=(x, y), width=100, height=100)

    assert compare([point(50, 50)], [point(51, 50)]).kept == 1
    assert compare([point(50, 50)], [point(60, 50)]).kept == 0


@pytest.fixture()
def connection(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    client.delete(AcceptanceLedger.TOTALS, AcceptanceLedger.IGNORED)
    for key in client.scan_iter("labelpilot:acceptance:annotation:*"):
        client.delete(key)
    return client


def test_ledger_sums_per_project_and_version(connection: redis.Redis) -> None:
    ledger = AcceptanceLedger(connection)
    ledger.record("ls-3", "ls-3-label-v1", 1, Comparison(4, 3, 1, 1))
    ledger.record("ls-3", "ls-3-label-v1", 2, Comparison(2, 1, 0, 1))
    ledger.record("ls-3", "ls-3-label-v2", 3, Comparison(5, 5, 0, 0))
    ledger.record("ls-4", "yolo11n-1a2b3c4d", 9, Comparison(1, 0, 2, 1))
    rows = {(r["project"], r["model_version"]): r for r in ledger.summary()}
    v1 = rows["ls-3", "ls-3-label-v1"]
    assert {k: v1[k] for k in ("annotations", "predicted", "kept", "added", "deleted", "rate")} == {
        "annotations": 2,
        "predicted": 6,
        "kept": 4,
        "added": 1,
        "deleted": 2,
        "rate": round(4 / 6, 4),
    }
    assert rows["ls-3", "ls-3-label-v2"]["rate"] == 1.0
    assert [r["model_version"] for r in ledger.summary("ls-3")] == [
        "ls-3-label-v1",
        "ls-3-label-v2",
    ]
    assert ledger.summary("ls-99") == []


def test_ledger_is_idempotent_per_annotation(connection: redis.Redis) -> None:
    ledger = AcceptanceLedger(connection)
    assert ledger.record("ls-3", "v1", 7, Comparison(4, 1, 0, 3)) is False
    assert ledger.record("ls-3", "v1", 7, Comparison(4, 1, 0, 3)) is True  # same again
    assert ledger.record("ls-3", "v1", 7, Comparison(4, 4, 1, 0)) is True  # UPDATED
    (row,) = ledger.summary("ls-3")
    assert (row["annotations"], row["predicted"], row["kept"], row["added"], row["deleted"]) == (
        1,
        4,
        4,
        1,
        0,
    )
    # an update compared against another version moves the annotation there
    ledger.record("ls-3", "v2", 7, Comparison(2, 2, 0, 0))
    assert [(r["model_version"], r["annotations"], r["kept"]) for r in ledger.summary()] == [
        ("v2", 1, 2)
    ]
    assert ledger.forget("ls-3", 7) is True
    assert ledger.forget("ls-3", 7) is False
    assert ledger.summary() == []


def test_ledger_counts_ignored_annotations(connection: redis.Redis) -> None:
    ledger = AcceptanceLedger(connection)
    ledger.ignore("ls-3", "no_labelpilot_prediction")
    ledger.ignore("ls-3", "no_labelpilot_prediction")
    ledger.ignore("ls-3", "skipped")
    assert ledger.ignored("ls-3") == {"ls-3": {"no_labelpilot_prediction": 2, "skipped": 1}}


def test_ledger_memory_is_bounded_by_a_ttl(connection: redis.Redis) -> None:
    ledger = AcceptanceLedger(connection, remember_s=60)
    ledger.record("ls-3", "v1", 1, Comparison(1, 1, 0, 0))
    ttl = connection.ttl("labelpilot:acceptance:annotation:ls-3:1")
    assert 0 < ttl <= 60


def ls_rect(x: float, y: float, w: float, h: float, label: str, rotation: float = 0) -> dict:
    return {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 200,
        "original_height": 100,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": rotation,
            "rectanglelabels": [label],
        },
    }


def test_label_studio_results_become_regions() -> None:
    from label_studio_sdk.converter.brush import mask2rle

    mask = np.zeros((100, 200), dtype=np.uint8)
    mask[10:30, 20:60] = 255
    result = [
        ls_rect(10, 10, 20, 20, "Car"),
        ls_rect(10, 10, 20, 20, "Car", rotation=30),
        {
            "from_name": "poly",
            "type": "polygonlabels",
            "original_width": 200,
            "original_height": 100,
            "value": {"points": [[0, 0], [10, 0], [10, 10]], "polygonlabels": ["Car"]},
        },
        {
            "from_name": "brush",
            "type": "brushlabels",
            "original_width": 200,
            "original_height": 100,
            "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["Car"]},
        },
        {
            "from_name": "kp",
            "type": "keypointlabels",
            "original_width": 200,
            "original_height": 100,
            "value": {"x": 50, "y": 50, "keypointlabels": ["Nose"]},
        },
        {"from_name": "class", "type": "choices", "value": {"choices": ["Cat", "Dog"]}},
        {"from_name": "note", "type": "textarea", "value": {"text": ["hi"]}},
        {
            "from_name": "label",
            "type": "rectanglelabels",
            "value": {"x": "bad", "rectanglelabels": ["Car"]},
        },
        "not a region",
    ]
    parsed = regions(result)
    assert [(r.control, r.label, r.kind) for r in parsed] == [
        ("label", "Car", "area"),
        ("label", "Car", "area"),
        ("poly", "Car", "area"),
        ("brush", "Car", "area"),
        ("kp", "Nose", "point"),
        ("class", "Cat", "choice"),
        ("class", "Dog", "choice"),
    ]
    assert parsed[0].box == BBox(20, 10, 60, 30)  # percent → pixels
    assert parsed[1].polygon is not None and len(parsed[1].polygon) == 4
    assert parsed[3].mask is not None and parsed[3].mask.sum() == 20 * 40
    assert parsed[4].point == (100.0, 50.0)
    assert [r.control for r in regions(result, frozenset({"class"}))] == ["class", "class"]


def test_only_labelpilot_predictions_are_compared() -> None:
    assert is_labelpilot_version("ls-3-label-v2", 3)
    assert is_labelpilot_version("yolo11n-1a2b3c4d", 3)
    assert is_labelpilot_version("ls-3-label-v2+sam-0123abcd", 3)
    assert not is_labelpilot_version("ls-4-label-v2", 3)
    assert not is_labelpilot_version("imported", 3)
    assert not is_labelpilot_version(None, 3)
    preds = [
        {"id": 1, "model_version": "ls-3-label-v1", "created_at": "2026-01-01"},
        {"id": 2, "model_version": "ls-3-label-v2", "created_at": "2026-01-02"},
        {"id": 3, "model_version": "someone-else", "created_at": "2026-01-03"},
    ]
    assert pick_prediction(preds, {}, 3)["id"] == 2  # type: ignore[index]
    assert pick_prediction(preds, {"parent_prediction": 1}, 3)["id"] == 1  # type: ignore[index]
    assert pick_prediction(preds, {"parent_prediction": 3}, 3)["id"] == 2  # type: ignore[index]
    assert pick_prediction(preds[2:], {}, 3) is None
    # a version trained on this annotation predicted later: not what the annotator saw
    made_before_v2 = {"created_at": "2026-01-01T12:00:00Z"}
    assert pick_prediction(preds, made_before_v2, 3)["id"] == 1  # type: ignore[index]
    assert pick_prediction(preds, {"created_at": "2025-12-31T00:00:00Z"}, 3) is None


def test_webhook_requests_only_for_created_and_updated_annotations() -> None:
    def event(action: str, **extra: object) -> WebhookEvent:
        return WebhookEvent.model_validate({"action": action, "project": {"id": 5}, **extra})

    made = acceptance_request(event("ANNOTATION_CREATED", annotation={"id": 9, "task": 4}))
    assert made is not None and (made.project_id, made.annotation_id, made.task_id) == (5, 9, 4)
    assert (
        acceptance_request(
            event("ANNOTATION_UPDATED", annotation={"id": 9}, task={"id": 4})
        ).task_id
        == 4
    )  # type: ignore[union-attr]
    assert acceptance_request(event("START_TRAINING")) is None
    assert acceptance_request(event("ANNOTATION_CREATED", annotation={"id": "x"})) is None


def test_webhook_queues_an_acceptance_job_and_answers_fast(make_client, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    import time

    from rq.job import Job

    client = make_client()
    body = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 77},
        "annotation": {"id": 501, "task": 12, "result": [ls_rect(1, 1, 5, 5, "Car")]},
        "task": {"id": 12},
    }
    started = time.monotonic()
    answer = client.post("/webhook", json=body)
    assert time.monotonic() - started < 1.0
    assert answer.status_code == 201, answer.get_json()
    job_id = answer.get_json()["acceptance"]
    assert job_id.startswith("acceptance-ls-77-501-")
    job = Job.fetch(job_id, connection=redis.Redis.from_url(redis_url))
    assert job.func_name == "labelpilot.jobs.acceptance_label_studio"
    assert job.kwargs == {"request": {"project_id": 77, "annotation_id": 501, "task_id": 12}}
    # not a training job: /jobs?project=77 stays for trainings, the result lives an hour
    assert job.meta["acceptance"] == "ls-77" and "key" not in job.meta
    assert job.result_ttl == 3600
    again = client.post("/webhook", json=body).get_json()
    assert again["acceptance"] == job_id  # the same state is compared once
    job.delete()


def test_deleted_annotation_webhook_takes_it_out_of_the_figures(make_client, redis_url: str):  # type: ignore[no-untyped-def]
    ledger = AcceptanceLedger(redis.Redis.from_url(redis_url))
    ledger.record("ls-78", "ls-78-label-v1", 9, Comparison(3, 2, 1, 1))
    ledger.record("ls-78", "ls-78-label-v1", 10, Comparison(1, 1, 0, 0))
    client = make_client()
    answer = client.post(
        "/webhook",
        json={"action": "ANNOTATION_DELETED", "project": {"id": 78}, "annotation": {"id": 9}},
    )
    assert answer.status_code == 201, answer.get_json()
    (row,) = ledger.summary("ls-78")
    assert (row["annotations"], row["predicted"], row["kept"]) == (1, 1, 1)
