"""The quality scan, whatever platform the images live on: fetch each item's file, decode it
(a failure is "corrupt" with the decoder's reason), check it, record it in the project's
`QualityLedger` (which adds duplicates) and hand the findings to a `ScanSink` that writes them
where annotators look. Progress ("scanned 120/500") goes into the RQ job's meta."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from labelpilot.backends.bands import BandMapping
from labelpilot.backends.quality import (
    FINDINGS,
    QualityReport,
    QualityThresholds,
    check_bytes,
    corrupt,
)
from labelpilot.backends.quality_ledger import QualityLedger
from labelpilot.trainers.job import running_job

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0
BATCH = 32  # items recorded (and published) together


class FetchError(Exception):
    """The item's file could not be fetched (not a finding about the image: it is unchecked)."""


@dataclass(frozen=True)
class ScanItem:
    item: str  # the id the findings are recorded under ("12": an LS task; "3": a CVAT frame)
    fetch: Callable[[], bytes]  # the file's bytes; raises FetchError when they cannot be had


@dataclass(frozen=True)
class Scanned:
    item: str
    report: QualityReport | None  # None: not checked (see `error`)
    error: str = ""


class ScanSink(Protocol):
    """Where the findings go (LS: task data fields and a tab; CVAT: frame tags)."""

    def publish(self, scanned: Sequence[Scanned]) -> dict[str, Any]: ...

    def finish(self) -> dict[str, Any]: ...


def scan_key(project: str) -> str:
    """Queue key of a project's scan (one at a time, apart from its training)."""
    return f"scan-{project}"


def describe(report: QualityReport) -> str:
    """The findings as annotators read them: "dark, blurry", "duplicate of 12", "ok"."""
    if not report.findings:
        return "ok"
    words = []
    for finding in report.findings:
        if finding in ("duplicate", "near_duplicate") and report.duplicate_of:
            words.append(f"{finding} of {report.duplicate_of}")
        else:
            words.append(finding)
    text = ", ".join(words)
    return f"{text}: {report.reason}" if report.reason else text


def run_scan(
    project: str,
    items: Iterable[ScanItem],
    sink: ScanSink,
    connection: redis.Redis,
    thresholds: QualityThresholds,
    *,
    max_pixels: int,
    total: int | None = None,
    bands: BandMapping | None = None,
    ledger: QualityLedger | None = None,
) -> dict[str, Any]:
    """Check every item of `project`; returns counts per finding and what could not be read."""
    ledger = ledger or QualityLedger(connection)
    found = dict.fromkeys(FINDINGS, 0)
    unread: list[dict[str, str]] = []
    done = 0
    flagged = [0]  # items with at least one finding
    started = time.monotonic()
    last = 0.0
    with running_job(connection, scan_key(project)) as progress:
        progress({"phase": "scanning", "done": 0, "total": total})
        batch: list[tuple[str, QualityReport]] = []
        failed: list[Scanned] = []

        def flush() -> None:
            recorded = ledger.record_many(project, batch, thresholds) if batch else []
            scanned = [Scanned(item, r) for (item, _), r in zip(batch, recorded, strict=True)]
            for s in scanned:
                for finding in s.report.findings if s.report else ():
                    found[finding] += 1
                flagged[0] += bool(s.report and s.report.findings)
            sink.publish([*scanned, *failed])
            batch.clear()
            failed.clear()

        for entry in items:
            try:
                data = entry.fetch()
            except FetchError as exc:
                log.warning("%s item %s not checked: %s", project, entry.item, exc)
                unread.append({"item": entry.item, "reason": str(exc)})
                failed.append(Scanned(entry.item, None, str(exc)))
            else:
                try:
                    report = check_bytes(data, thresholds, max_pixels=max_pixels, bands=bands)[0]
                except MemoryError as exc:  # one file must not end the scan of the others
                    report = corrupt(f"too large to decode here: {exc or 'out of memory'}")
                except Exception as exc:  # a decoder bug on one odd file: reported, not fatal
                    log.exception("%s item %s: checking failed", project, entry.item)
                    report = corrupt(f"could not be checked: {type(exc).__name__}: {exc}")
                batch.append((entry.item, report))
            done += 1
            if len(batch) + len(failed) >= BATCH:
                flush()
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                progress({"phase": "scanning", "done": done, "total": total})
        flush()
        elapsed = time.monotonic() - started
        result = {
            "key": scan_key(project),
            "project": project,
            "scanned": done,
            "checked": done - len(unread),
            "flagged": flagged[0],
            "findings": found,
            "unreadable": unread,
            "seconds": round(elapsed, 2),
            "images_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
            **sink.finish(),
        }
        named = ", ".join(f"{k} {v}" for k, v in found.items() if v) or "no findings"
        result["summary"] = f"{done} images scanned, {flagged[0]} with findings ({named})" + (
            f", {len(unread)} not readable" if unread else ""
        )
        progress(
            {
                "phase": "done",
                "done": done,
                "total": total,
                "scan_flagged": flagged[0],
                "findings": {k: v for k, v in found.items() if v},
            }
        )
        return result
