"""Model store on disk + Redis pointer, and the per-process hot-swap."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis

from labelpilot.backends.hot_swap import CurrentModels
from labelpilot.backends.model_store import UPDATES_CHANNEL, ModelStore


@pytest.fixture()
def store(tmp_path: Path, redis_url: str) -> ModelStore:
    client = redis.Redis.from_url(redis_url)
    return ModelStore(tmp_path / "store", client)


def weights(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"w-{content.decode()}.pt"
    path.write_bytes(content)
    return path


def test_versions_are_numbered_and_a_killed_writer_leaves_nothing_visible(store, tmp_path):
    key = f"k{time.time_ns()}"
    v1 = store.write_version(key, weights(tmp_path, b"a"), {"metrics": {"x": 1}})
    (store.root / key / ".partial-deadbeef").mkdir()  # what a SIGKILL mid-write leaves
    (store.root / key / ".partial-deadbeef" / "weights.pt").write_bytes(b"half")
    v2 = store.write_version(key, weights(tmp_path, b"b"), {})
    assert [v.version for v in store.versions(key)] == ["v1", "v2"]
    assert v1.weights.read_bytes() == b"a" and v2.info()["version"] == "v2"
    assert v1.model_version == f"{key}-v1"
    assert store.current(key) is None  # written is not promoted


def test_promote_publishes_and_rollback_returns_to_the_previous(store, tmp_path, redis_url):
    key = f"k{time.time_ns()}"
    for content in (b"a", b"b", b"c"):
        store.write_version(key, weights(tmp_path, content), {})
    pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(UPDATES_CHANNEL)
    time.sleep(0.1)
    store.promote(key, "v1")
    store.promote(key, "v3")
    assert store.current(key).version == "v3"
    assert store.rollback(key).version == "v1"
    assert store.current(key).version == "v1"
    messages = []
    deadline = time.monotonic() + 2
    while len(messages) < 3 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message:
            messages.append(json.loads(message["data"]))
    assert [m["version"] for m in messages if m["key"] == key] == ["v1", "v3", "v1"]
    with pytest.raises(KeyError):
        store.promote(key, "v9")


def test_pointer_file_serves_when_redis_is_down(tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    up = ModelStore(tmp_path / "store", client)
    key = f"k{time.time_ns()}"
    up.write_version(key, weights(tmp_path, b"a"), {})
    up.promote(key, "v1")
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    down = ModelStore(tmp_path / "store", dead)
    assert down.current(key).version == "v1"


def test_hot_swap_loads_before_switching(store, tmp_path):
    key = f"k{time.time_ns()}"
    store.write_version(key, weights(tmp_path, b"a"), {})
    store.write_version(key, weights(tmp_path, b"b"), {})
    store.promote(key, "v1")
    loading = threading.Event()
    release = threading.Event()
    loaded: list[str] = []

    def slow_load(path: str) -> None:
        loading.set()
        release.wait(5)
        loaded.append(Path(path).parent.name)

    current = CurrentModels(store, slow_load)
    assert current.get(key).version == "v1"
    store.promote(key, "v2")
    swapper = threading.Thread(target=current.refresh, args=(key,))
    swapper.start()
    assert loading.wait(2)
    assert current.get(key).version == "v1"  # still serving the old one while loading
    release.set()
    swapper.join(5)
    assert current.get(key).version == "v2" and loaded == ["v2"]
