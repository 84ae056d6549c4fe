"""An RQ job that reports training-like progress (for the dashboard's browser test): the
dashboard must show its bar moving while it runs."""

from __future__ import annotations

import time

from rq import get_current_job


def progress_job(key: str, epochs: int, pause_s: float) -> str:
    job = get_current_job()
    assert job is not None
    for epoch in range(epochs + 1):
        job.meta.update({"key": key, "phase": "training", "epoch": epoch, "epochs": epochs})
        job.save_meta()
        time.sleep(pause_s)
    return "done"
