"""The README's commands as a user runs them: `labelpilot serve` and `labelpilot demo`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from labelpilot.embedded_redis import free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",
                                                             "PROMETHEUS_MULTIPROC_DIR")}
    env["LABELPILOT_DATA_DIR"] = str(tmp_path / "data")
    return env


def test_serve_starts_embedded_redis_worker_and_gunicorn_and_stops_cleanly(tmp_path):
    port, cvat_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "labelpilot", "serve", "--port", str(port), "--workers", "2",
         "--host", "127.0.0.1", "--cvat-port", str(cvat_port), "--cvat-host", "127.0.0.1"],
        env=user_env(tmp_path), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "serve did not become healthy"
            time.sleep(0.3)
        answer = requests.post(f"http://127.0.0.1:{port}/webhook", timeout=5,
                               json={"action": "START_TRAINING", "project": {"id": 1}})
        assert answer.status_code == 201, answer.text  # recorded in the embedded Redis
        # the CVAT facade listens on its own port, and only there
        facade = requests.get(f"http://127.0.0.1:{cvat_port}/api/functions", timeout=30)
        assert facade.status_code == 200 and "labelpilot-tracker" in facade.json()
        assert requests.get(f"http://127.0.0.1:{port}/api/functions",
                            timeout=30).status_code == 404
        assert (tmp_path / "data" / "redis" / "redis.log").exists()
        # another shell's CLI finds the embedded Redis: the queued job is listed
        jobs = subprocess.run([sys.executable, "-m", "labelpilot", "jobs"], cwd=REPO,
                              env=user_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert answer.json()["job"] in jobs.stdout, jobs.stdout + jobs.stderr
        settings = subprocess.run(
            [sys.executable, "-m", "labelpilot", "settings", "ls-1", "--epochs", "5"], cwd=REPO,
            env=user_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert "epochs=5" in settings.stdout, settings.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "started embedded redis" in output
    assert "Worker" in output  # the RQ worker ran


@pytest.mark.e2e
def test_demo_sets_up_label_studio_with_pre_annotations(tmp_path):
    env = user_env(tmp_path)
    env["LABELPILOT_MODEL_DETECT"] = "yolo11n.pt"  # not downloadable here → offline fallback
    result = subprocess.run(
        [sys.executable, "-m", "labelpilot", "demo", "--no-wait", "--port", str(free_port()),
         "--backend-port", str(free_port())], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the dashboard has something to show: two trained versions, acceptance, a quality scan
    assert re.search(r"trained ls-\d+-label-v1, ls-\d+-label-v2", result.stdout), result.stdout
    kept = re.findall(r"(\S+): (\d+) of (\d+) predicted boxes kept", result.stdout)
    assert len(kept) >= 2 and all(int(n) > 0 for _, _, n in kept), result.stdout
    assert re.search(r"quality scan   34 images scanned, [3-9] with findings", result.stdout)
    assert re.search(r"Dashboard      http://127\.0\.0\.1:\d+/dashboard", result.stdout)
    assert "weight downloads are off" in result.stderr and "Offline fallback" in result.stderr
    assert "tasks          34, with pre-annotations: 34" in result.stdout
    # Label Studio serves the least certain task first, among labelpilot's predictions
    assert "serves the least certain task first (Uncertainty sampling" in result.stdout
    assert "admin@example.com / labelpilot-demo" in result.stdout
