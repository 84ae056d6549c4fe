"""Child processes, handled the same way everywhere: stopped by asking (SIGTERM), waiting, then
forcing; and made to exit with their parent."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import cache


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


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets `sig` when this process dies, even
    by SIGKILL or the OOM killer (Linux; None elsewhere). Linux sends it when the *thread* that
    forked exits: start supervised children from the main thread."""
    libc = _libc()
    if libc is None:
        return None
    parent = os.getpid()  # read before the fork

    def preexec() -> None:
        set_parent_death_signal(sig, parent, libc)

    return preexec


def set_parent_death_signal(sig: int, parent: int, libc: ctypes.CDLL | None = None) -> None:
    """In a freshly forked child: receive `sig` when `parent` dies (also if it already has)."""
    libc = libc or _libc()
    if libc is None:
        return
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
