"""Webhook events that should lead to training: validated, recorded in Redis, acknowledged fast.

Only ids and the action are kept (the LS payload carries the project's API token). The training
job that consumes these comes with the retraining loop; until then nothing is lost.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from labelpilot.adapters.label_studio.payloads import WebhookEvent

EVENTS_STREAM = "labelpilot:ls:training-events"
STREAM_MAXLEN = 100_000


def record_training_event(connection: redis.Redis, event: WebhookEvent) -> str:
    """Append the event to the training-events stream; returns its stream id."""
    fields: dict[Any, Any] = {
        "action": event.action,
        "project": str(event.project_id),
        "annotation": str((event.annotation or {}).get("id", "")),
        "task": str((event.task or {}).get("id", (event.annotation or {}).get("task", ""))),
        "user": str((event.annotation or {}).get("completed_by", "")),
        "received_at": f"{time.time():.3f}",
    }
    entry_id = connection.xadd(EVENTS_STREAM, fields, maxlen=STREAM_MAXLEN, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
