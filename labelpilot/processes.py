"""Stopping child processes the same way everywhere: ask (SIGTERM), wait, then force."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence


def stop_processes(processes: Sequence[subprocess.Popen[bytes] | None], *, grace: float = 20,
                   group: bool = False) -> None:
    """SIGTERM all (their process groups with `group`), wait up to `grace` s, then SIGKILL."""
    alive = [p for p in processes if p is not None and p.poll() is None]
    for process in alive:
        _signal(process, signal.SIGTERM, group)
    for process in alive:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL, group)
            process.wait()


def _signal(process: subprocess.Popen[bytes], sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except ProcessLookupError:
        pass
