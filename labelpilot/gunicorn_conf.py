"""gunicorn settings for `labelpilot serve` (threads, timeout and binds come on its command
line, from the settings)."""

import os
from typing import Any

from prometheus_client import multiprocess

worker_class = "gthread"
graceful_timeout = 30
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # prometheus-client's own variable
        multiprocess.mark_process_dead(worker.pid)
