"""How many images each model version predicted per day, per project (for the KPI dashboard).

An `Observer` on the serving path: one Redis round trip per model batch (a pipeline of
HINCRBYs). Counts live in one hash per project and UTC day,
``labelpilot:usage:<project>:<YYYY-MM-DD>`` (field: the model version LS/CVAT sees), which
expires after `keep_days`, so the figures stay bounded without a cleanup job.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from labelpilot.backends.observation import Observation
from labelpilot.backends.redis_text import as_text

_DAY = "labelpilot:usage:{}:{}"
_PROJECTS = "labelpilot:usage:projects"
KEEP_DAYS = 90


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


class PredictionCounter:
    """Predicted images per project, model version and UTC day, kept `keep_days` days.
    `clock`: seconds since the epoch (tests pass their own day)."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        keep_days: int = KEEP_DAYS,
        clock: Callable[[], float] = time.time,
    ):
        if keep_days < 1:
            raise ValueError(f"keep_days must be at least 1, not {keep_days}")
        self.connection = connection
        self.keep_days = keep_days
        self.clock = clock

    def observe(self, batch: Sequence[Observation]) -> None:
        """Count the batch's images (an Observer)."""
        self.add(Counter((o.project, o.model_version) for o in batch))

    def add(
        self, counts: Counter[tuple[str, str]] | dict[tuple[str, str], int], at: float | None = None
    ) -> None:
        """Add `counts` ((project, model_version) → images) to the day of `at` (now)."""
        if not counts:
            return
        day = _day(self.clock() if at is None else at)
        ttl = (self.keep_days + 1) * 86400
        pipe = self.connection.pipeline(transaction=False)
        for (project, model_version), n in counts.items():
            key = _DAY.format(project, day)
            pipe.hincrby(key, model_version, int(n))
            pipe.expire(key, ttl)
        pipe.sadd(_PROJECTS, *{project for project, _ in counts})
        pipe.execute()

    def per_day(self, project: str, days: int = 30) -> list[dict[str, Any]]:
        """The last `days` UTC days, oldest first, days without predictions included:
        ``[{"day": "2026-11-29", "total": 12, "by_version": {"ls-3-label-v2": 12}}, ...]``."""
        days = max(1, min(days, self.keep_days))
        today = datetime.fromtimestamp(self.clock(), UTC)
        names = [
            (today - timedelta(days=back)).strftime("%Y-%m-%d") for back in range(days - 1, -1, -1)
        ]
        pipe = self.connection.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(_DAY.format(project, name))
        out = []
        for name, raw in zip(names, pipe.execute(), strict=True):
            by_version = {as_text(k): int(v) for k, v in sorted(raw.items())}
            out.append({"day": name, "total": sum(by_version.values()), "by_version": by_version})
        return out

    def totals(self, project: str, days: int = KEEP_DAYS) -> dict[str, int]:
        """Images per model version over the last `days` days."""
        found: Counter[str] = Counter()
        for day in self.per_day(project, days):
            found.update(day["by_version"])
        return dict(found)

    def projects(self) -> list[str]:
        """Projects that ever had a prediction counted."""
        return sorted(as_text(p) for p in self.connection.smembers(_PROJECTS))
