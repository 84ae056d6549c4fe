import subprocess
import sys
import time

from labelpilot.processes import stop_processes


def test_processes_that_ignore_sigterm_are_killed_after_the_grace_period():
    stubborn = subprocess.Popen([sys.executable, "-c", (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")])
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.5)
    started = time.monotonic()
    stop_processes([stubborn, polite, None], grace=1)
    assert stubborn.returncode == -9 and polite.returncode == -15
    assert time.monotonic() - started < 10


def test_a_process_group_is_stopped_as_a_whole():
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); time.sleep(60)")], start_new_session=True)
    time.sleep(0.5)
    stop_processes([parent], grace=5, group=True)
    assert parent.returncode == -15
    deadline = time.monotonic() + 5  # the orphaned child is reaped by init asynchronously
    while time.monotonic() < deadline and _group_alive(parent.pid):
        time.sleep(0.1)
    assert not _group_alive(parent.pid)


def _group_alive(pgid: int) -> bool:
    listed = subprocess.run(["ps", "-e", "-o", "pgid=,stat="], capture_output=True, text=True)
    return any(line.split()[0] == str(pgid) and not line.split()[1].startswith("Z")
               for line in listed.stdout.splitlines() if line.strip())
