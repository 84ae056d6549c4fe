"""Keeping `labelpilot serve`'s helper processes (RQ worker, embedded Redis) running.

`Supervisor.poll()` is called from the serving loop on the main thread (children get their
parent-death signal from the thread that forked them): a child that exited is restarted after a
backoff that doubles while it keeps dying young, and every exit and restart is logged.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from labelpilot.processes import stop_processes

log = logging.getLogger(__name__)
Process = subprocess.Popen[bytes]


@dataclass
class Child:
    """`start` launches it (and returns once it is usable); `on_exit` cleans up after one that
    died (e.g. unregisters a dead RQ worker), before the restart."""

    name: str
    start: Callable[[], Process]
    on_exit: Callable[[Process], None] | None = None
    process: Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    due: float | None = None  # when to restart it
    backoff: float = 0.0


class Supervisor:
    def __init__(self, *, min_backoff: float = 0.5, max_backoff: float = 10.0,
                 stable_after: float = 30.0):
        """A child that ran for `stable_after` s is restarted after `min_backoff` s; one that
        dies sooner waits twice as long as the last time, up to `max_backoff` s."""
        self.children: list[Child] = []
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after

    def add(self, child: Child) -> Child:
        """Supervise `child`, starting it now unless it already runs (`child.process`)."""
        if child.process is None:
            child.process = child.start()
        child.started_at = time.monotonic()
        self.children.append(child)
        return child

    def processes(self) -> list[Process | None]:
        return [child.process for child in self.children]

    def poll(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                self._exited(child, now)
            if child.process is None and child.due is not None and now >= child.due:
                self._restart(child)

    def stop(self, grace: float = 20) -> None:
        stop_processes(self.processes(), grace=grace)

    def _exited(self, child: Child, now: float) -> None:
        process, child.process = child.process, None
        assert process is not None
        ran = now - child.started_at
        child.backoff = self.min_backoff if ran >= self.stable_after else min(
            self.max_backoff, max(self.min_backoff, child.backoff * 2))
        child.due = now + child.backoff
        log.warning("%s (pid %d) exited with code %s after %.1f s; restarting it in %.1f s",
                    child.name, process.pid, process.returncode, ran, child.backoff)
        if child.on_exit is not None:
            try:
                child.on_exit(process)
            except Exception:
                log.exception("cleaning up after %s failed", child.name)

    def _restart(self, child: Child) -> None:
        try:
            child.process = child.start()
        except Exception as exc:
            child.backoff = min(self.max_backoff, max(self.min_backoff, child.backoff * 2))
            child.due = time.monotonic() + child.backoff
            log.error("restarting %s failed (%s); next try in %.1f s", child.name, exc,
                      child.backoff)
            return
        child.started_at = time.monotonic()
        child.due = None
        child.restarts += 1
        log.warning("restarted %s (pid %d, restart %d)", child.name, child.process.pid,
                    child.restarts)
