"""Quality findings per project in Redis: each item's latest report, counts per finding, and the
perceptual hashes that exact and near duplicates are found against.

An item is compared only with the items recorded before it first was (its position in the
project's hash list), so recording the same item again, as a re-scan does, gives the same
answer: it never becomes a duplicate of itself, and the first of two copies stays the original.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import redis

from labelpilot.backends.observation import Observation
from labelpilot.backends.quality import FINDINGS, QualityReport, QualityThresholds, check_image
from labelpilot.backends.redis_text import as_text

log = logging.getLogger(__name__)
MAX_HASHES = 50_000  # hashes kept per project; later items are still checked against them
_PROJECTS = "labelpilot:quality:projects"
_ITEMS = "labelpilot:quality:{}:items"  # item → report JSON
_COUNTS = "labelpilot:quality:{}:counts"  # finding → items with it; "checked" → items
_HASHES = "labelpilot:quality:{}:hashes"  # list of "item<TAB>phash", in first-recorded order
_POSITION = "labelpilot:quality:{}:position"  # item → its index in the hash list


class QualityLedger:
    """Findings of every checked item, per project. Thread-safe; one per process is enough
    (it caches each project's hashes as a numpy array, read incrementally from Redis)."""

    def __init__(self, connection: redis.Redis, *, max_hashes: int = MAX_HASHES):
        self.connection = connection
        self.max_hashes = max_hashes
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[list[str], np.ndarray]] = {}

    def record(
        self,
        project: str,
        item: str,
        report: QualityReport,
        thresholds: QualityThresholds | None = None,
    ) -> QualityReport:
        """Store `report` for `item`, with "duplicate" / "near_duplicate" added when an item
        recorded earlier has the same hash (or one within `thresholds.near_duplicate` bits)."""
        return self.record_many(project, [(item, report)], thresholds)[0]

    def record_many(
        self,
        project: str,
        reports: Sequence[tuple[str, QualityReport]],
        thresholds: QualityThresholds | None = None,
    ) -> list[QualityReport]:
        """`record` for a batch, in a few Redis round trips."""
        distance = (thresholds or QualityThresholds()).near_duplicate
        items = [item for item, _ in reports]
        with self._lock:
            read = self.connection.pipeline(transaction=False)
            read.hmget(_POSITION.format(project), items)
            read.hmget(_ITEMS.format(project), items)
            read.llen(_HASHES.format(project))
            stored, previous, kept = read.execute()
            positions = {i: int(p) for i, p in zip(items, stored, strict=True) if p is not None}
            new = list(
                dict.fromkeys(item for item, r in reports if item not in positions and r.phash)
            )
            new = new[: max(0, self.max_hashes - int(kept))]
            if new:  # appended first: RPUSH's answer is each item's true place in the list
                append = self.connection.pipeline(transaction=False)
                for item in new:
                    append.rpush(
                        _HASHES.format(project),
                        f"{item}\t{next(r.phash for i, r in reports if i == item)}",
                    )
                lengths = append.execute()
                positions.update({item: int(n) - 1 for item, n in zip(new, lengths, strict=True)})
            if int(kept) < len(self._cache.get(project, ((), None))[0]):
                self._cache.pop(project, None)  # the list was dropped (forget) elsewhere
            names, hashes = self._hashes(project)
            write = self.connection.pipeline(transaction=True)
            if new:
                write.hset(
                    _POSITION.format(project), mapping={item: positions[item] for item in new}
                )
            out: list[QualityReport] = []
            counts: dict[str, int] = {}
            latest = dict(zip(items, previous, strict=True))  # each item's report before
            for item, report in reports:
                before = positions.get(item, len(names))
                final = _with_duplicates(report, names[:before], hashes[:before], distance,
                                         item)
                out.append(final)
                dumped = _dump(final)
                write.hset(_ITEMS.format(project), item, dumped)
                old = latest[item]
                latest[item] = dumped  # twice in one batch: the later replaces the earlier
                for finding in final.findings:
                    counts[finding] = counts.get(finding, 0) + 1
                if old is None:
                    counts["checked"] = counts.get("checked", 0) + 1
                else:
                    for finding in json.loads(as_text(old))["findings"]:
                        counts[finding] = counts.get(finding, 0) - 1
            for name, change in counts.items():
                if change:
                    write.hincrby(_COUNTS.format(project), name, change)
            write.sadd(_PROJECTS, project)
            write.execute()
            return out

    def _hashes(self, project: str) -> tuple[list[str], np.ndarray]:
        """The project's hash list, with what other processes appended since the last read."""
        names, hashes = self._cache.get(project, ([], np.zeros(0, np.uint64)))
        names = list(names)  # a copy: the cached list is never changed in place
        fresh = self.connection.lrange(_HASHES.format(project), len(names), -1)
        if fresh:
            pairs = [as_text(entry).split("\t") for entry in fresh]
            names.extend(name for name, _ in pairs)
            hashes = np.concatenate(
                [hashes, np.array([int(h, 16) for _, h in pairs], dtype=np.uint64)]
            )
            self._cache[project] = (names, hashes)
        return names, hashes

    def findings(self, project: str, item: str) -> QualityReport | None:
        raw = self.connection.hget(_ITEMS.format(project), item)
        return None if raw is None else _load(as_text(raw))

    def reports(self, project: str) -> dict[str, QualityReport]:
        return {
            as_text(k): _load(as_text(v))
            for k, v in self.connection.hgetall(_ITEMS.format(project)).items()
        }

    def counts(self, project: str) -> dict[str, int]:
        """Items with each finding (every name of FINDINGS, 0 when none) and "checked"."""
        raw = {
            as_text(k): int(v) for k, v in self.connection.hgetall(_COUNTS.format(project)).items()
        }
        return {"checked": raw.get("checked", 0), **{f: raw.get(f, 0) for f in FINDINGS}}

    def projects(self) -> list[str]:
        return sorted(as_text(p) for p in self.connection.smembers(_PROJECTS))

    def forget(self, project: str) -> None:
        """Drop a project's findings and hashes (e.g. before a test)."""
        self.connection.delete(*(k.format(project) for k in (_ITEMS, _COUNTS, _HASHES, _POSITION)))
        self.connection.srem(_PROJECTS, project)
        with self._lock:
            self._cache.pop(project, None)


def _with_duplicates(
    report: QualityReport, names: list[str], hashes: np.ndarray, distance: int, item: str = ""
) -> QualityReport:
    if not report.phash or not len(hashes):
        return report
    # `names` are the items recorded before this one first was; the item itself can still be
    # among them when two processes appended it at once, and is never its own duplicate
    bits = np.bitwise_count(hashes ^ np.uint64(int(report.phash, 16)))
    near = [int(i) for i in np.flatnonzero(bits <= distance) if names[int(i)] != item]
    if not near:
        return report
    closest = min(near, key=lambda i: (int(bits[i]), i))  # the first exact copy, if any
    kind = "duplicate" if int(bits[closest]) == 0 else "near_duplicate"
    return report.with_duplicate(kind, names[closest])


def _dump(report: QualityReport) -> str:
    return json.dumps(
        {
            "findings": list(report.findings),
            "measures": report.measures,
            "phash": report.phash,
            "reason": report.reason,
            "duplicate_of": report.duplicate_of,
            "at": round(time.time(), 3),
        }
    )


def _load(raw: str) -> QualityReport:
    data = json.loads(raw)
    return QualityReport(
        tuple(data["findings"]),
        data.get("measures") or {},
        data.get("phash", ""),
        data.get("reason", ""),
        data.get("duplicate_of", ""),
    )


class QualityObserver:
    """Checks every image /predict serves and records it (an `Observer`). An item already
    checked by this process recently is not checked again (LS asks for the same task's
    prediction many times); `thresholds_for(project)` is cached for `settings_ttl_s`."""

    def __init__(
        self,
        ledger: QualityLedger,
        thresholds_for: Callable[[str], QualityThresholds],
        *,
        remember: int = 10_000,
        settings_ttl_s: float = 10.0,
    ):
        self.ledger = ledger
        self.thresholds_for = thresholds_for
        self.remember = remember
        self.settings_ttl_s = settings_ttl_s
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._thresholds: dict[str, tuple[float, QualityThresholds]] = {}
        self._lock = threading.Lock()

    def _settings(self, project: str) -> QualityThresholds:
        now = time.monotonic()
        cached = self._thresholds.get(project)
        if cached is None or now - cached[0] > self.settings_ttl_s:
            cached = (now, self.thresholds_for(project))
            self._thresholds[project] = cached
        return cached[1]

    def observe(self, batch: Sequence[Observation]) -> None:
        by_project: dict[str, list[tuple[str, QualityReport]]] = {}
        with self._lock:
            fresh = [o for o in batch if (o.project, o.item) not in self._seen]
            for o in fresh:
                self._seen[(o.project, o.item)] = None
            while len(self._seen) > self.remember:
                self._seen.popitem(last=False)
        for o in fresh:
            thresholds = self._settings(o.project)
            by_project.setdefault(o.project, []).append(
                (o.item, check_image(o.image, thresholds, bands=o.bands))
            )
        for project, reports in by_project.items():
            self.ledger.record_many(project, reports, self._settings(project))
