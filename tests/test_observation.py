"""The serving path tells its observers about every predicted image, and an observer that
fails never fails a prediction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from labelpilot.backends.observation import Observation
from labelpilot.label_config import load
from tests.helpers import generate_images, serve_directory
from tests.test_app import predict_body


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Observation] = []

    def observe(self, batch: Sequence[Observation]) -> None:
        self.seen.extend(batch)


class Broken:
    def observe(self, batch: Sequence[Observation]) -> None:
        raise RuntimeError("this observer is broken")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("observed")
    generate_images(directory, 2, seed=11)
    (directory / "truncated.png").write_bytes((directory / "img11_0.png").read_bytes()[:100])
    with serve_directory(directory) as url:
        yield url


def test_observers_see_each_predicted_image_and_a_broken_one_changes_nothing(
        monkeypatch: pytest.MonkeyPatch, shapes_model: Path, redis_url: str, images: str,
        caplog: pytest.LogCaptureFixture) -> None:
    from labelpilot.app import create_app
    from labelpilot.runtime import build_predictor, model_store
    from labelpilot.settings import load_settings

    monkeypatch.setenv("LABELPILOT_MODEL_DETECT", str(shapes_model))
    monkeypatch.setenv("LABELPILOT_ALLOWED_HOSTS", "127.0.0.1")
    settings = load_settings()
    connection = redis.Redis.from_url(redis_url)
    predictor = build_predictor(settings, model_store(settings, connection))
    recorder = Recorder()
    predictor.observers = (Broken(), recorder)
    client = create_app(settings, connection, predictor=predictor).test_client()

    urls = [f"{images}/img11_0.png", f"{images}/truncated.png", f"{images}/img11_1.png"]
    body = client.post("/predict", json=predict_body(urls, load("detection_shapes"))).json
    results = body["results"]
    assert [("result" in r) for r in results] == [True, False, True]
    assert [o.item for o in recorder.seen] == ["0", "2"], "only decoded images are observed"
    first = recorder.seen[0]
    assert first.project == "ls-5" and first.model_key is None and first.bands == 3
    assert first.model_version == results[0]["model_version"]
    assert first.image.ndim == 3 and first.image.dtype.name == "uint8"
    assert first.features is not None and first.features.ndim == 1 and first.features.size > 0, \
        "the backbone's pooled features come with each image"
    scores = sorted(r["score"] for r in results[0]["result"])
    assert sorted(round(c, 4) for c in first.confidences) == pytest.approx(
        [round(s, 4) for s in scores], abs=1e-3)
    assert "observer Broken failed on 2 image(s)" in caplog.text


class RedisDown:
    def __init__(self) -> None:
        self.calls = 0

    def observe(self, batch: Sequence[Observation]) -> None:
        self.calls += 1
        raise redis.ConnectionError("Connection refused")


def test_an_observer_whose_redis_is_down_sits_out_a_while() -> None:
    """A Redis outage costs one connection timeout per pause, not one per /predict batch."""
    import numpy as np

    from labelpilot.backends.observation import notify

    down, recorder = RedisDown(), Recorder()
    seen = Observation("ls-1", None, "m", "1", np.zeros((8, 8, 3), np.uint8), 3, None, ())
    for _ in range(5):
        notify([down, recorder], [seen])
    assert down.calls == 1 and len(recorder.seen) == 5
