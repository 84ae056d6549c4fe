"""Image-quality checks on a generated corpus (detection and false-alarm rates), decoding
failures, the Redis ledger of findings and duplicates, the /predict observer and the
per-project thresholds."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import redis
import tifffile

from bench.quality import good_images, rates, variants
from labelpilot.backends.observation import Observation, notify
from labelpilot.backends.quality import (
    FINDINGS,
    QualityReport,
    QualityThresholds,
    check_bytes,
    check_image,
)
from labelpilot.backends.quality_ledger import QualityLedger, QualityObserver
from labelpilot.trainers.quality_settings import load_thresholds
from labelpilot.trainers.settings import save_params
from tests.helpers import huge_png, run_cli

BUS = good_images(("astronaut",))["astronaut"]


@pytest.fixture()
def connection(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture()
def ledger(connection: redis.Redis) -> QualityLedger:
    ledger = QualityLedger(connection)
    for project in ("q-test", "q-other"):
        ledger.forget(project)
    return ledger


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def test_good_photos_pass_and_each_bad_variant_is_caught_on_the_corpus() -> None:
    measured = rates()
    assert measured["good_images"] >= 15
    assert measured["false_alarm_rate"] == 0.0, measured["false_alarms"]
    detection = measured["detection_rate"]
    for check in (
        "dark",
        "low_information",
        "odd_size",
        "odd_size_strip",
        "odd_bands",
        "near_duplicate",
    ):
        assert detection[check] == 1.0, (check, measured["missed"])
    # the misses: a photo soft by nature (clock) blurred, dim photos brightened ×2.5 that
    # stay below the clipping share (rocket, zidane)
    assert detection["blurry"] >= 0.9, measured["missed"]
    assert detection["overexposed"] >= 0.85, measured["missed"]
    assert measured["near_duplicate_false_alarm_rate"] == 0.0
    assert measured["hash_bits"]["copies_max"] <= 3 < 12 <= measured["hash_bits"]["distinct_min"]


def test_each_check_names_only_its_own_finding() -> None:
    bad = variants(BUS)
    assert check_image(BUS).findings == ()
    assert check_image(bad["dark"]).findings == ("dark",)  # a dark photo is not also blurry
    assert check_image(bad["blurry"]).findings == ("blurry",)
    assert check_image(bad["overexposed"]).findings == ("overexposed",)
    assert check_image(bad["low_information"]).findings == ("low_information",)
    assert check_image(bad["odd_size"]).findings == ("odd_size",)
    assert check_image(BUS, bands=4).findings == ("odd_bands",)
    assert check_image(BUS, QualityThresholds(bands=(4,)), bands=4).findings == ()
    gray = cv2.cvtColor(BUS, cv2.COLOR_BGR2GRAY)
    assert check_image(gray, bands=1).findings == ()
    black = np.zeros((100, 100, 3), np.uint8)
    assert check_image(black).findings == ("dark", "low_information")


def test_thresholds_move_the_decision() -> None:
    dim = (BUS.astype(np.float32) * 0.45).astype(np.uint8)  # brightness ≈ 52
    assert check_image(dim).findings == ()
    assert check_image(dim, QualityThresholds(dark=60)).findings == ("dark",)
    report = check_image(BUS)
    assert set(report.measures) >= {
        "brightness",
        "contrast",
        "clipped",
        "blur",
        "width",
        "height",
        "bands",
    }
    assert len(report.phash) == 16


@pytest.mark.parametrize(
    "bad",
    [
        {"dark": -1},
        {"overexposed": 300},
        {"blurry": 0},
        {"clipped": 2},
        {"min_side": 0},
        {"max_aspect": 0.5},
        {"bands": ()},
        {"near_duplicate": 40},
        {"low_information": -1},
    ],
)
def test_nonsense_thresholds_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        QualityThresholds(**bad)


def test_undecodable_files_are_corrupt_with_the_reason_and_huge_ones_odd_size() -> None:
    good = jpeg(BUS)
    cases = {
        b"": "0 bytes",
        good[: len(good) // 2]: "truncated",
        b"%PDF-1.4 not an image at all": "not an image",
    }
    for data, words in cases.items():
        report, image = check_bytes(data, max_pixels=10_000_000)
        assert report.findings == ("corrupt",) and words in report.reason, report
        assert image is None and report.phash == ""
    huge, _ = check_bytes(huge_png(5000, 5000), max_pixels=10_000_000)
    assert huge.findings == ("odd_size",), huge
    assert "LABELPILOT_MAX_IMAGE_PIXELS" in huge.reason and huge.measures["pixels"] == 25e6
    fine, image = check_bytes(good, max_pixels=10_000_000)
    assert fine.findings == () and image is not None


def test_band_counts_come_from_the_source_file() -> None:
    gray = cv2.imencode(".png", cv2.cvtColor(BUS, cv2.COLOR_BGR2GRAY))[1].tobytes()
    assert check_bytes(gray, max_pixels=10**8)[0].measures["bands"] == 1
    four = io.BytesIO()
    stack = np.dstack([BUS[:, :, ::-1], BUS[:, :, 1]]).astype(np.uint16) * 200
    tifffile.imwrite(four, stack, photometric="minisblack", planarconfig="contig")
    report, _ = check_bytes(four.getvalue(), max_pixels=10**8)
    assert report.measures["bands"] == 4 and "odd_bands" in report.findings, report
    report, _ = check_bytes(four.getvalue(), QualityThresholds(bands=(3, 4)), max_pixels=10**8)
    assert "odd_bands" not in report.findings


def test_the_ledger_finds_duplicates_counts_and_is_idempotent(ledger: QualityLedger) -> None:
    good = good_images(("camera", "coins", "moon", "astronaut"))
    reports = {name: check_image(image) for name, image in good.items()}
    near = check_image(good["camera"][10:-10, 10:-10])  # cropped a little: 2 bits apart
    dark = check_image(variants(good["astronaut"])["dark"])
    first = [
        ledger.record("q-test", "1", reports["camera"]),
        ledger.record("q-test", "2", reports["coins"]),
        ledger.record("q-test", "3", reports["camera"]),  # the same picture again
        ledger.record("q-test", "4", near),
        ledger.record("q-test", "5", dark),
    ]
    assert [r.findings for r in first] == [(), (), ("duplicate",), ("near_duplicate",), ("dark",)]
    assert first[2].duplicate_of == "1" and first[3].duplicate_of in ("1", "3")
    # a resized or re-encoded copy has the very same hash: a duplicate
    resized = check_image(cv2.resize(good["camera"], None, fx=0.5, fy=0.5))
    assert ledger.record("q-other", "a", reports["camera"]).findings == ()
    assert ledger.record("q-other", "b", resized).findings == ("duplicate",)
    counts = ledger.counts("q-test")
    assert counts["checked"] == 5 and counts["duplicate"] == 1
    assert counts["near_duplicate"] == 1 and counts["dark"] == 1
    assert set(counts) == {"checked", *FINDINGS}
    # a re-scan, in another order and another process: same answers, same counts
    again = QualityLedger(ledger.connection)
    second = again.record_many(
        "q-test",
        [
            ("5", dark),
            ("4", near),
            ("3", reports["camera"]),
            ("1", reports["camera"]),
            ("2", reports["coins"]),
        ],
    )
    assert [r.findings for r in second[::-1]] == [r.findings for r in first]
    assert again.counts("q-test") == counts
    stored = again.findings("q-test", "3")
    assert stored is not None and stored.findings == ("duplicate",) and stored.duplicate_of
    assert again.findings("q-test", "nope") is None
    assert "q-test" in again.projects()
    # an item whose image changed loses its old finding in the counts
    ledger.record("q-test", "5", reports["moon"])
    assert ledger.counts("q-test")["dark"] == 0
    # projects are apart: the same picture elsewhere is no duplicate
    assert ledger.record("q-other", "c", reports["coins"]).findings == ()


def test_an_item_twice_in_one_batch_counts_once(ledger: QualityLedger) -> None:
    dark = check_image(variants(BUS)["dark"])
    out = ledger.record_many("q-test", [("7", dark), ("7", dark)])
    assert [r.findings for r in out] == [("dark",), ("dark",)]
    assert ledger.counts("q-test")["checked"] == 1 and ledger.counts("q-test")["dark"] == 1


def test_the_hashes_kept_are_bounded(ledger: QualityLedger) -> None:
    small = QualityLedger(ledger.connection, max_hashes=2)
    good = good_images(("camera", "coins", "moon"))
    for i, image in enumerate(good.values()):
        small.record("q-test", str(i), check_image(image))
    assert ledger.connection.llen("labelpilot:quality:q-test:hashes") == 2
    # the third is still checked against the kept ones
    assert small.record("q-test", "x", check_image(good["camera"])).findings == ("duplicate",)
    assert small.counts("q-test")["checked"] == 4


def observation(project: str, item: str, image: np.ndarray, bands: int = 3) -> Observation:
    return Observation(
        project=project,
        model_key=None,
        model_version="yolo11n",
        item=item,
        image=image,
        bands=bands,
        features=None,
        confidences=(0.9,),
    )


def test_the_predict_observer_records_each_item_once(
    ledger: QualityLedger, connection: redis.Redis
) -> None:
    save_params(connection, "q-test", quality_dark=60)
    observer = QualityObserver(ledger, lambda p: load_thresholds(connection, p))
    dim = (good_images(("coins",))["coins"].astype(np.float32) * 0.5).astype(np.uint8)
    batch = [
        observation("q-test", "1", BUS),
        observation("q-test", "2", dim),
        observation("q-other", "1", dim),
        observation("q-test", "3", BUS, bands=4),
    ]
    notify([observer], batch)
    notify([observer], batch)  # LS asks again: not checked twice
    assert ledger.findings("q-test", "2").findings == ("dark",)  # the project's threshold
    assert ledger.findings("q-other", "1").findings == ()  # the default there
    assert ledger.findings("q-test", "3").findings == ("odd_bands", "duplicate")
    counts = ledger.counts("q-test")
    assert counts["checked"] == 3 and counts["dark"] == 1 and counts["odd_bands"] == 1


def test_quality_settings_are_project_settings(
    connection: redis.Redis, redis_url: str, make_client
) -> None:
    connection.delete("labelpilot:settings:q-test")
    params = save_params(
        connection, "q-test", quality_blurry=0.4, quality_bands="1,3,4", low_quality="skip"
    )
    assert params.low_quality == "skip"
    assert load_thresholds(connection, "q-test").bands == (1, 3, 4)
    assert load_thresholds(connection, "q-test").blurry == 0.4
    for bad in ({"low_quality": "maybe"}, {"quality_bands": "x"}, {"quality_dark": 999}):
        with pytest.raises(ValueError):
            save_params(connection, "q-test", **bad)

    out = run_cli(
        "settings",
        "q-test",
        "--quality",
        "dark=30",
        "--quality",
        "bands=1,3",
        "--low-quality",
        "keep",
        env={"REDIS_URL": redis_url},
    )
    assert out.returncode == 0, out.stderr
    assert "quality_dark=30.0" in out.stdout and "low_quality=keep" in out.stdout
    refused = run_cli("settings", "q-test", "--quality", "darkness=3", env={"REDIS_URL": redis_url})
    assert refused.returncode == 2 and "NAME one of dark" in refused.stderr, refused.stderr
    refused = run_cli("settings", "q-test", "--quality", "blurry=7", env={"REDIS_URL": redis_url})
    assert refused.returncode == 2 and "blurry" in refused.stderr
    assert "Traceback" not in refused.stderr

    client = make_client(LABELPILOT_ADMIN_TOKEN="admin-secret")
    auth = {"Authorization": "Bearer admin-secret"}
    path = "/admin/projects/q-test/settings"
    answer = client.put(path, json={"quality_near_duplicate": 4}, headers=auth)
    assert answer.status_code == 200 and answer.json["quality_near_duplicate"] == 4
    bad = client.put(path, json={"quality_blurry": 3}, headers=auth)
    assert bad.status_code == 400 and "blurry" in bad.json["error"], bad.json
    assert load_thresholds(connection, "q-test").near_duplicate == 4


def test_a_report_with_duplicate_keeps_the_finding_order() -> None:
    report = QualityReport(("dark", "odd_bands"), {}, "0" * 16)
    assert report.with_duplicate("duplicate", "3").findings == ("dark", "odd_bands", "duplicate")


def test_predict_records_the_quality_of_every_image_it_serves(
    monkeypatch: pytest.MonkeyPatch, shapes_model, redis_url: str, tmp_path, ledger
) -> None:
    """The composed app (runtime.build_observers): /predict checks each decoded image."""
    from labelpilot.app import create_app
    from labelpilot.label_config import load
    from labelpilot.settings import load_settings
    from tests.helpers import serve_directory
    from tests.test_app import predict_body

    monkeypatch.setenv("LABELPILOT_MODEL_DETECT", str(shapes_model))
    monkeypatch.setenv("LABELPILOT_ALLOWED_HOSTS", "127.0.0.1")
    ledger.forget("ls-5")
    good = good_images(("camera",))["camera"]
    cv2.imwrite(str(tmp_path / "good.png"), good)
    cv2.imwrite(str(tmp_path / "dark.png"), variants(good_images(("coins",))["coins"])["dark"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    connection = redis.Redis.from_url(redis_url)
    client = create_app(load_settings(), connection).test_client()
    with serve_directory(tmp_path) as url:
        names = ["good.png", "dark.png", "broken.png"]
        body = predict_body([f"{url}/{n}" for n in names], load("detection_shapes"))
        answer = client.post("/predict", json=body)
    assert answer.status_code == 200
    assert ledger.findings("ls-5", "0").findings == ()
    assert ledger.findings("ls-5", "1").findings == ("dark",)
    assert ledger.findings("ls-5", "2") is None, "an image that failed to decode is not served"
    assert ledger.counts("ls-5")["checked"] == 2 and "ls-5" in ledger.projects()

    monkeypatch.setenv("LABELPILOT_WATCH", "false")
    ledger.forget("ls-5")
    quiet = create_app(load_settings(), connection).test_client()
    with serve_directory(tmp_path) as url:
        quiet.post("/predict", json=predict_body([f"{url}/dark.png"], load("detection_shapes")))
    assert ledger.counts("ls-5")["checked"] == 0, "LABELPILOT_WATCH=false: no checks"


def test_the_perceptual_hash_is_imagehash_phash_bit_for_bit() -> None:
    import imagehash
    from PIL import Image

    from labelpilot.backends.quality import gray_copy, phash

    for image in [*good_images(("camera", "coffee", "text")).values(), *variants(BUS).values()]:
        gray = gray_copy(image)
        small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA)
        assert phash(gray) == str(imagehash.phash(Image.fromarray(small)))


def test_an_item_appended_twice_by_two_processes_is_not_its_own_duplicate() -> None:
    from labelpilot.backends.quality import QualityReport
    from labelpilot.backends.quality_ledger import _with_duplicates

    hashes = np.array([int("ffff0000ffff0000", 16), int("ffff0000ffff0000", 16)], np.uint64)
    report = QualityReport((), {}, "ffff0000ffff0000")
    assert _with_duplicates(report, ["12", "12"], hashes, 6, "12").findings == ()
    found = _with_duplicates(report, ["12", "40"], hashes, 6, "40")
    assert found.findings == ("duplicate",) and found.duplicate_of == "12"
