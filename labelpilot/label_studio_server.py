"""Run a real Label Studio (from its own venv) for the demo and the tests.

The first start of a fresh data dir runs ~60 s of migrations; `template` keeps a migrated copy so
later starts take seconds. The settings are the ones a local backend needs (see design.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from labelpilot.processes import stop_processes

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


def default_ls_venv() -> Path:
    """LABELPILOT_LS_VENV, else `.ls-venv` in the repo (where `./run setup` installs LS)."""
    from labelpilot.settings import load_settings

    return load_settings().ls_venv or REPO / ".ls-venv"


@dataclass
class LabelStudioServer:
    data_dir: Path
    port: int = 18080
    host: str = "127.0.0.1"
    username: str = "admin@example.com"
    password: str = "labelpilot-demo"
    token: str = "labelpilot0demo0token0000000000000000000"
    venv: Path = field(default_factory=default_ls_venv)
    template: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def files_root(self) -> Path:
        return self.data_dir / "files"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_",
                                                                         "DJANGO_"))}
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir / "ls"),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.files_root),
            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SECRET_KEY": "labelpilot-local-secret-key-not-for-production",
            "LABEL_STUDIO_HOST": self.url,
        })
        return env

    def start(self, timeout: float = 240.0) -> None:
        binary = self.venv / "bin" / "label-studio"
        if not binary.exists():
            raise RuntimeError(f"Label Studio is not installed at {self.venv}: run ./run setup")
        fresh = not (self.data_dir / "ls").exists()
        if fresh and self.template and (self.template / "ls").exists():
            shutil.copytree(self.template / "ls", self.data_dir / "ls")
            fresh = False
        self.files_root.mkdir(parents=True, exist_ok=True)
        if _port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} is taken; Label Studio would silently move")
        log.info("starting Label Studio at %s (%s)", self.url,
                 "first start, migrating ~60 s" if fresh else "existing data dir")
        logfile = open(self.data_dir / "label-studio.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(binary), "start", "--no-browser", "--internal-host", self.host,
             "-p", str(self.port)],
            env=self.env(), stdout=logfile, stderr=subprocess.STDOUT, cwd=self.data_dir,
            start_new_session=True)
        self._wait_healthy(timeout)
        if fresh and self.template is not None:
            self.save_template()

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited; see {self.data_dir}/label-studio.log")
            try:
                if requests.get(f"{self.url}/health", timeout=2).json().get("status") == "UP":
                    who = requests.get(f"{self.url}/api/current-user/whoami", timeout=5,
                                       headers={"Authorization": f"Token {self.token}"})
                    if who.status_code == 200:
                        return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError(f"Label Studio not healthy after {timeout} s")

    def save_template(self) -> None:
        """Keep a copy of the freshly migrated data dir (SQLite + media) for fast later starts."""
        assert self.template is not None
        tmp = self.template.with_name(self.template.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.data_dir / "ls", tmp / "ls")
        shutil.rmtree(self.template, ignore_errors=True)
        tmp.rename(self.template)

    def stop(self) -> None:
        stop_processes([self.process], grace=15, group=True)
        self.process = None


def _port_open(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0
