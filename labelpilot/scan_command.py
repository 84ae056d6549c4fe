"""`labelpilot scan --ls-project N | --cvat-task N [--wait]`: check every image of a project
for quality (corrupt, dark, overexposed, blurry, near-constant, odd size or bands, exact and
near duplicates) and mark the findings where annotators look: Label Studio task data fields
`labelpilot_quality` / `labelpilot_quality_issues` and the tab "labelpilot: quality"; CVAT
tags "quality:<finding>" on the frames. Without --wait it queues an RQ job (progress in
`labelpilot jobs`: "scanned 120/500")."""

from __future__ import annotations

from typing import Any

from labelpilot.settings import Settings


class ScanCommandError(ValueError):
    """What to fix before a scan can run."""


def summary(result: dict[str, Any]) -> str:
    """The result in one line per fact, e.g. "scanned 12 images (40.1 images/s): 3 flagged"."""
    found = ", ".join(f"{k} {v}" for k, v in result["findings"].items() if v) or "none"
    where = (
        f"tab 'labelpilot: quality', id {result['view']}"
        if "view" in result
        else f"{result.get('tagged', 0)} CVAT tags"
    )
    lines = [
        f"scanned {result['scanned']} images ({result.get('images_per_s')} images/s): "
        f"{result['flagged']} with findings ({where})",
        f"findings: {found}",
    ]
    lines += [f"not checked: item {u['item']}: {u['reason']}" for u in result["unreadable"]]
    return "\n".join(lines)


def run_scan_command(
    settings: Settings, *, ls_project: int | None, cvat_task: int | None, wait: bool, user: str
) -> str:
    """Run the scan here (`wait`) or queue it; returns what to print."""
    from labelpilot import jobs
    from labelpilot.adapters.cvat.scan import request_cvat_scan
    from labelpilot.adapters.label_studio.scan import request_scan
    from labelpilot.redis_conn import connect

    if (ls_project is None) == (cvat_task is None):
        raise ScanCommandError("give one of --ls-project or --cvat-task")
    trigger = {"event": "CLI", "user": user}
    if wait:
        result = (
            jobs.scan_cvat(cvat_task, trigger)
            if cvat_task is not None
            else jobs.scan_label_studio(int(ls_project or 0), trigger)
        )
        return summary(result)
    connection = connect(settings)
    queued = (
        request_cvat_scan(connection, jobs.CVAT_SCAN_JOB, cvat_task, trigger)
        if cvat_task is not None
        else request_scan(connection, jobs.SCAN_JOB, int(ls_project or 0), trigger)
    )
    return f"{queued.outcome}: job {queued.job_id} (see: labelpilot jobs)"
