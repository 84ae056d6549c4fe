"""gunicorn settings for `labelpilot serve` (values come from the environment it sets)."""

import os

from prometheus_client import multiprocess

worker_class = "gthread"
threads = int(os.environ.get("LABELPILOT_THREADS", "4"))
timeout = int(os.environ.get("LABELPILOT_TIMEOUT", "120"))
graceful_timeout = 30
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
