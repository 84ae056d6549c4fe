"""Real parts for the tests: Redis, a trained YOLO model, Label Studio, a gunicorn backend."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
ARTIFACTS = REPO / "test-artifacts"

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["LABELPILOT_DOWNLOAD_WEIGHTS"] = "0"  # inherited by every server the tests start
from labelpilot.backends.offline import configure_ultralytics  # noqa: E402

configure_ultralytics(REPO / ".ultralytics")

from labelpilot.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from labelpilot.processes import stop_processes  # noqa: E402

_LOCAL_PREFIXES = ("127.", "::1", "localhost")


@pytest.fixture(scope="session", autouse=True)
def no_network() -> Iterator[None]:
    """Fail any test that opens a connection to a non-loopback address from this process."""
    import socket

    original = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(
                _LOCAL_PREFIXES):
            raise AssertionError(f"test tried the network: connect to {address}")
        original(self, address)  # type: ignore[arg-type]

    socket.socket.connect = guarded  # type: ignore[method-assign]
    yield
    socket.socket.connect = original  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis database the tests own and empty first: LABELPILOT_TEST_REDIS_URL, else DB 15
    of the machine's Redis on 6379, else an embedded redis-server."""
    url = os.environ.get("LABELPILOT_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"
    server = None
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        client.ping()
    except redis.RedisError:
        server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        url = server.start()
        client = redis.Redis.from_url(url)
    client.flushdb()  # project ids restart with each fresh Label Studio: no stale pointers
    os.environ["REDIS_URL"] = url
    from labelpilot.redis_conn import get_redis

    get_redis.cache_clear()
    yield url
    if server:
        server.stop()


@pytest.fixture(scope="session")
def shapes_model() -> Path:
    """A YOLO11n trained from YAML on generated shapes (cached in .cache/models)."""
    from labelpilot.shapes_model import ensure_shapes_model

    return ensure_shapes_model(CACHE / "models")


@pytest.fixture(scope="session")
def weak_shapes_model() -> Path:
    """An under-trained shapes model (8 epochs): retraining on labels must beat it."""
    from labelpilot.shapes_model import WEAK_RECIPE, ensure_shapes_model

    return ensure_shapes_model(CACHE / "models", WEAK_RECIPE)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real Label Studio 1.23.2, started once per session from a migrated data-dir template."""
    from labelpilot.label_studio_server import LabelStudioServer

    server = LabelStudioServer(data_dir=tmp_path_factory.mktemp("label-studio"),
                               port=free_port(), template=CACHE / "ls-template")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ls_admin(label_studio):  # type: ignore[no-untyped-def]
    from labelpilot.adapters.label_studio.client import LabelStudioClient

    return LabelStudioClient(label_studio.url, label_studio.token)


@pytest.fixture(scope="session")
def personal_access_token(ls_admin) -> str:  # type: ignore[no-untyped-def]
    """The admin's JWT personal access token (LS 1.23 issues one per user: made once here)."""
    return str(ls_admin.post("/api/token/")["token"])


class BackendServer:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path):
        self.url = url
        self.process = process
        self.log = log

    def stop(self) -> None:
        stop_processes([self.process])


def start_backend(tmp: Path, env_extra: dict[str, str], workers: int = 2,
                  auth: tuple[str, str] | None = None) -> BackendServer:
    """`labelpilot serve`'s gunicorn, as a real server on a free port (`auth`: the basic auth
    its /health needs, when `env_extra` turns it on)."""
    from labelpilot.serving import gunicorn_command

    port = free_port()
    env = dict(os.environ)
    prom = tmp / "prometheus"
    prom.mkdir(parents=True, exist_ok=True)
    env.update({"PROMETHEUS_MULTIPROC_DIR": str(prom), "MODEL_DIR": str(tmp / "models"),
                "PYTHONPATH": str(REPO), **env_extra})
    log = tmp / "backend.log"
    process = subprocess.Popen(gunicorn_command("127.0.0.1", port, workers), env=env, cwd=REPO,
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"backend exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=1, auth=auth).status_code == 200:
                return BackendServer(url, process, log)
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"backend not healthy:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
            shapes_model: Path) -> Iterator[BackendServer]:
    """The backend with the shapes model as default detector; LS address comes from /setup."""
    tmp = tmp_path_factory.mktemp("backend")
    server = start_backend(tmp, {"REDIS_URL": redis_url,
                                 "LABELPILOT_MODEL_DETECT": str(shapes_model)})
    yield server
    server.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "backend.log").write_bytes(server.log.read_bytes())


@pytest.fixture()
def env(redis_url: str, shapes_model: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a `labelpilot` command run by a test: the tests' Redis, a fresh
    MODEL_DIR, the shapes model as the default detector."""
    return {"REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "models"),
            "LABELPILOT_MODEL_DETECT": str(shapes_model)}


@pytest.fixture()
def make_client(monkeypatch, shapes_model: Path, redis_url: str):  # type: ignore[no-untyped-def]
    """An app composed from the environment's settings (plus `env`), as gunicorn's is."""
    from labelpilot.app import create_app
    from labelpilot.settings import load_settings

    apps = []

    def make(redis_to: str = redis_url, **env: str):  # type: ignore[no-untyped-def]
        monkeypatch.setenv("LABELPILOT_MODEL_DETECT", str(shapes_model))
        monkeypatch.setenv("LABELPILOT_ALLOWED_HOSTS", "127.0.0.1")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        connection = redis.Redis.from_url(redis_to, socket_connect_timeout=0.5,
                                          socket_timeout=2.0)
        app = create_app(load_settings(), connection)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:  # no listener left loading weights when the process exits
        app.extensions["labelpilot.predictor"].close()


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No hot-swap listener may still be loading weights when the interpreter exits."""
    from labelpilot.backends.hot_swap import stop_all

    stop_all()
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's own exit status once everything is reported:
    the session loads torch, OpenCV and FFmpeg, whose native thread pools can abort the
    interpreter's final teardown ("terminate called without an active exception", exit
    134) after every test passed; skipping that teardown keeps the status honest."""
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


def pytest_report_header() -> list[str]:
    return [f"python {sys.version.split()[0]}, repo {REPO}"]
