"""Several "hosts" on one machine for tests: Linux network namespaces joined by veth links to a
bridge (iproute2's `ip netns`; needs root).

Each host is a namespace with its own loopback and one address on a private subnet that
exists only inside the lab's namespaces (nothing is added to the machine's own network). Names
carry the creating process id, so a crashed run's leftovers are found and removed by the next
one (`remove_stale`). The test process itself stays in its own namespace; `Host.call` runs a
function on a thread that joined the host's namespace, so a client in the test reaches a
host's services on the host's own 127.0.0.1 (as an admin logged into that host would).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
PREFIX = "lpt"  # lpt<pid>-<host>
SUBNET = "10.213.7"  # /24, private to the lab's namespaces


def unavailable() -> str | None:
    """Why a lab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the test as root: `ip netns add` needs it)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def enter_namespace(name: str) -> None:
    """Move the calling thread (only it) into namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _pids_in(name: str) -> list[int]:
    done = _ip("netns", "pids", name, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_all_in(name: str) -> None:
    for pid in _pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete(name: str) -> None:
    _kill_all_in(name)
    deadline = time.monotonic() + 5
    while _pids_in(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    _ip("netns", "delete", name, check=False)


def remove_stale() -> list[str]:
    """Delete the namespaces (and their processes) of lab runs whose process is gone."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _delete(name)
            removed.append(name)
    return removed


@dataclass
class Host:
    """One namespace: `address` on the lab's subnet, processes started in it, and a thread
    in it for the test's own clients."""

    lab: Lab
    role: str
    name: str
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _thread: ThreadPoolExecutor | None = None

    def popen(self, command: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """`command` running in this host (its own session: `kill` ends its children too)."""
        process = subprocess.Popen(["ip", "netns", "exec", self.name, *command], env=env,
                                   cwd=cwd, stdout=open(log, "ab"),  # noqa: SIM115
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *command], capture_output=True,
                              text=True, timeout=60, check=True)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args)` on this host's thread (its sockets live in this namespace)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"ns-{self.role}",
                                              initializer=enter_namespace,
                                              initargs=(self.name,))
        return self._thread.submit(fn, *args, **kwargs).result()

    def kill(self, process: subprocess.Popen[bytes] | None = None) -> None:
        """SIGKILL one process group started here (default: all of them), as a host lost
        with its power would end them."""
        for p in [process] if process else list(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def link_down(self) -> None:
        """Unplug the host: its link to the bridge goes down (processes keep running)."""
        _ip("-n", self.name, "link", "set", "eth0", "down")

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
        for p in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


class Lab:
    """A bridge namespace and hosts wired to it; `close` removes all of it, processes first."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._names: list[str] = []

    def __enter__(self) -> Lab:
        remove_stale()
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _delete(name)  # a leftover of this very pid (pids are reused)
        _ip("netns", "add", name)
        self._names.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, role: str) -> Host:
        """A new host named `role` (letters and digits), linked to the bridge."""
        number = len(self.hosts) + 2
        name = f"{self.tag}-{role}"
        self._add_namespace(name)
        port = f"p{number}"  # the bridge's end, named inside the switch namespace only
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", name)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        address = f"{SUBNET}.{number}"
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        host = Host(self, role, name, address)
        self.hosts[role] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
        for name in reversed(self._names):
            _delete(name)
        self._names.clear()


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    with Lab() as built:
        yield built
