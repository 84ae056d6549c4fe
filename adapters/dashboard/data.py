"""The dashboard's figures, gathered into plain dicts (the JSON API returns them as they are;
the HTML page and the plots read the same dicts).

Sources: the model store (versions; each version.json is the audit trail), the promotion
history, the training queue, and the watchers' ledgers (quality findings, acceptance rate,
retraining requests, drift status, predictions per day). Project keys are the training queue's
("ls-3", "cvat-task-7"); model-store keys belong to the project they start with ("ls-3-label").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from labelpilot.backends.model_store import ModelStore, ModelVersion
from labelpilot.backends.usage import PredictionCounter
from labelpilot.trainers import queue
from labelpilot.trainers.scan import scan_key

_LS_MODEL = re.compile(r"^(ls-\d+)-.+$")
# promotions by these are the system's own; any other `by` is a person who vetted the version
AUTOMATIC = frozenset({"auto-gate", "system"})
MANIFEST_ITEMS = 200  # left-out items listed in a version's audit trail (the rest counted)
_PRIMARY = ("map50_95", "accuracy_top1")


class NotFound(LookupError):
    """An unknown project, model key or version (the API answers 404 with the message)."""


class QualitySource(Protocol):
    def counts(self, project: str) -> dict[str, int]: ...
    def projects(self) -> list[str]: ...


class AcceptanceSource(Protocol):
    def summary(self, project: str | None = None) -> list[dict[str, Any]]: ...


class RetrainingSource(Protocol):
    def list(self, project: str | None = None) -> list[dict[str, Any]]: ...
    def approve(self, request_id: str, store: ModelStore, by: str) -> dict[str, Any]: ...
    def reject(self, request_id: str, by: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Sources:
    """Where the figures come from; `build` wires the real ledgers to one Redis."""

    store: ModelStore
    connection: redis.Redis
    quality: QualitySource
    acceptance: AcceptanceSource
    retraining: RetrainingSource
    usage: PredictionCounter
    drift: Callable[[redis.Redis, str], dict[str, Any] | None]

    @classmethod
    def build(cls, store: ModelStore, connection: redis.Redis) -> Sources:
        from labelpilot.backends.acceptance import AcceptanceLedger
        from labelpilot.backends.quality_ledger import QualityLedger
        from labelpilot.trainers.drift_monitor import drift_status
        from labelpilot.trainers.retraining import RetrainingRequests

        return cls(
            store,
            connection,
            QualityLedger(connection),
            AcceptanceLedger(connection),
            RetrainingRequests(connection),
            PredictionCounter(connection),
            drift_status,
        )


def project_of(model_key: str) -> str:
    """The project a model-store key belongs to: "ls-3-label" → "ls-3"; CVAT keys
    ("cvat-task-7") and other keys are their own project."""
    match = _LS_MODEL.match(model_key)
    return match.group(1) if match else model_key


def project_keys(sources: Sources) -> list[str]:
    """Every project something is known about: models, predictions, findings, acceptance,
    retraining requests."""
    found = {project_of(k) for k in sources.store.model_keys()}
    found.update(sources.quality.projects())
    found.update(sources.usage.projects())
    found.update(str(row["project"]) for row in sources.acceptance.summary())
    found.update(str(r["project"]) for r in sources.retraining.list())
    return sorted(found, key=_natural)


def _natural(key: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def model_keys(sources: Sources, project: str) -> list[str]:
    return [k for k in sources.store.model_keys() if project_of(k) == project]


def primary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """{"name", "value"} of the metric the promotion gate judges by, if the version has one."""
    for name in _PRIMARY:
        if metrics and isinstance(metrics.get(name), int | float):
            return {"name": name, "value": float(metrics[name])}
    return None


def _acceptance_by_version(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(r["model_version"]): r for r in rows}


def version_row(
    version: ModelVersion,
    *,
    serving: bool,
    acceptance: dict[str, dict[str, Any]],
    predictions: dict[str, int],
    history: list[dict[str, Any]],
    left_out: int = 20,
) -> dict[str, Any]:
    """One version with its audit trail (version.json: trigger, dataset and manifest,
    parameters, timings, metrics, decision; the promotion history: who promoted it), what
    annotators kept of its predictions and how many images it predicted. `left_out`: how
    many left-out items to name (all are counted)."""
    info = version.info()
    metrics = info.get("metrics") or {}
    candidate = metrics.get("candidate") if isinstance(metrics, dict) else None
    promotions = [h for h in history if h.get("version") == version.version]
    dataset = info.get("dataset") or {}
    return {
        "version": version.version,
        "model_version": version.model_version,
        "written_at": info.get("written_at"),
        "serving": serving,
        "metric": primary(candidate),
        "metrics": metrics,
        "task": info.get("task"),
        "class_names": info.get("class_names") or [],
        "base_model": info.get("base_model"),
        "parent_version": info.get("parent_version"),
        "trigger": info.get("trigger") or {},
        "params": info.get("params") or {},
        "timings": info.get("timings") or {},
        "decision": info.get("decision") or {},
        "dataset": {
            "counts": dataset.get("counts") or {},
            **manifest_summary(dataset.get("manifest") or [], left_out),
        },
        "promotions": promotions,
        "vetted_by": vetted_by(promotions),
        "acceptance": acceptance.get(version.model_version),
        "predictions": predictions.get(version.model_version, 0),
        "extra": {k: v for k, v in info.items() if k not in _SHOWN},
    }


_SHOWN = frozenset(
    {
        "task",
        "class_names",
        "base_model",
        "parent_version",
        "trigger",
        "params",
        "timings",
        "metrics",
        "decision",
        "dataset",
        "written_at",
        "key",
        "version",
        "keypoint_count",
        "compared_with",
    }
)


def vetted_by(promotions: list[dict[str, Any]]) -> str | None:
    """The last person who promoted the version (None: only the automatic gate did)."""
    people = [str(p.get("by")) for p in promotions if p.get("by") not in AUTOMATIC]
    return people[-1] if people else None


def model_summary(
    sources: Sources, key: str, acceptance: dict[str, dict[str, Any]], predictions: dict[str, int]
) -> dict[str, Any]:
    store = sources.store
    current = store.current(key)
    history = store.history(key)
    versions = [
        version_row(
            v,
            serving=current is not None and v.version == current.version,
            acceptance=acceptance,
            predictions=predictions,
            history=history,
        )
        for v in store.versions(key)
    ]
    drift = sources.drift(sources.connection, key)
    return {
        "key": key,
        "current": current.version if current else None,
        "current_model_version": current.model_version if current else None,
        "versions": versions,
        "history": history,
        "drift": drift,
        # the last test was of the version serving now (not of one since replaced)
        "drift_current": bool(
            drift and current and drift.get("model_version") == current.model_version
        ),
    }


def job_row(job: dict[str, Any]) -> dict[str, Any]:
    """A queue entry with its progress as a fraction (None when the job reports none)."""
    meta = job.get("meta") or {}
    done = total = None
    if isinstance(meta.get("epochs"), int) and meta["epochs"] > 0:
        done, total = int(meta.get("epoch") or 0), int(meta["epochs"])
    elif isinstance(meta.get("total"), int) and meta["total"] > 0:
        done, total = int(meta.get("done") or meta.get("processed") or 0), int(meta["total"])
    status = str(job.get("status"))
    fraction = min(1.0, done / total) if done is not None and total else None
    if status == "finished":
        fraction = 1.0
    key = str(job.get("key"))
    kind = ("quality scan" if key.startswith("scan-") else
            "bulk prediction" if key.startswith("predict-") else "training")
    return {
        "id": job.get("id"),
        "key": key,
        "project": project_of(key.removeprefix("scan-").removeprefix("predict-")),
        "kind": kind,
        "rate": meta.get("rate"),  # bulk prediction: tasks/s and seconds left
        "eta_s": meta.get("eta_s"),
        "status": status,
        "phase": meta.get("phase"),
        "done": done,
        "total": total,
        "progress": fraction,
        "enqueued_at": _iso(job.get("enqueued_at")),
        "ended_at": _iso(job.get("ended_at")),
        "error": (job.get("error") or [None])[-1] or meta.get("error"),
        "trigger": meta.get("trigger"),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else value


def jobs(sources: Sources, project: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Training, scan and bulk prediction jobs, newest first: running and queued ones before
    the ended. A project's jobs are its trainings (queue key "ls-3"), its scans ("scan-ls-3")
    and its bulk predictions ("predict-ls-3")."""
    if project is None:
        found = queue.jobs(sources.connection, None, limit=limit)
    else:
        found = [
            *queue.jobs(sources.connection, project, limit=limit),
            *queue.jobs(sources.connection, scan_key(project), limit=limit),
            *queue.jobs(sources.connection, f"predict-{project}", limit=limit),
        ]
    rows = list({r["id"]: r for r in map(job_row, found)}.values())
    rows.sort(key=lambda r: str(r["enqueued_at"] or ""), reverse=True)
    order = {"started": 0, "queued": 1, "deferred": 1, "scheduled": 1}
    return sorted(rows, key=lambda r: order.get(r["status"], 2))[:limit]


def project_detail(
    sources: Sources, project: str, *, days: int = 30, known: list[str] | None = None
) -> dict[str, Any]:
    """Everything the project page shows; NotFound for a project nothing is known about.
    `known`: the project keys, when the caller has them already."""
    known = project_keys(sources) if known is None else known
    if project not in known:
        raise NotFound(
            f"unknown project '{project}': known projects are "
            f"{', '.join(known) or 'none yet'} (GET /dashboard/api/projects)"
        )
    acceptance_rows = sources.acceptance.summary(project)
    acceptance = _acceptance_by_version(acceptance_rows)
    predictions = sources.usage.totals(project)
    models = [
        model_summary(sources, k, acceptance, predictions) for k in model_keys(sources, project)
    ]
    requests = sources.retraining.list(project)
    return {
        "project": project,
        "models": models,
        "acceptance": acceptance_rows,
        "predictions_per_day": sources.usage.per_day(project, days),
        "quality": sources.quality.counts(project),
        "retraining": requests,
        "pending_retraining": [r for r in requests if r.get("status") in ("ready", "training")],
        "jobs": jobs(sources, project),
    }


def project_summary(detail: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one project (the overview's card)."""
    serving = [v for m in detail["models"] for v in m["versions"] if v["serving"]]
    week = detail["predictions_per_day"][-7:]
    drifted = [
        m["key"]
        for m in detail["models"]
        if m["drift_current"] and (m.get("drift") or {}).get("drifted")
    ]
    accepted = [v["acceptance"] for v in serving if v["acceptance"]]
    return {
        "project": detail["project"],
        "models": len(detail["models"]),
        "versions": sum(len(m["versions"]) for m in detail["models"]),
        "serving": [{"key": m["key"], "version": m["current"]} for m in detail["models"]],
        "metric": serving[0]["metric"] if serving else None,
        "acceptance_rate": accepted[0].get("rate") if accepted else None,
        "predictions_7d": sum(d["total"] for d in week),
        "findings": sum(n for name, n in detail["quality"].items() if name != "checked"),
        "checked": detail["quality"].get("checked", 0),
        "drifted": drifted,
        "drift_checked": any(m["drift_current"] for m in detail["models"]),
        "pending_retraining": len([r for r in detail["retraining"] if r.get("status") == "ready"]),
        "active_jobs": len(
            [j for j in detail["jobs"] if j["status"] in ("started", "queued", "deferred")]
        ),
    }


def overview(sources: Sources) -> dict[str, Any]:
    """Every project's headline figures."""
    known = project_keys(sources)
    return {
        "projects": [
            project_summary(project_detail(sources, p, days=7, known=known)) for p in known
        ]
    }


def version_detail(sources: Sources, key: str, version: str) -> dict[str, Any]:
    """The audit trail of one version (`version_row`, naming every left-out item), with the
    retraining requests that produced it."""
    store = sources.store
    if key not in store.model_keys():
        raise NotFound(
            f"unknown model '{key}': known models are {', '.join(store.model_keys()) or 'none yet'}"
        )
    try:
        found = store.get(key, version)
    except KeyError:
        known = ", ".join(v.version for v in store.versions(key)) or "none"
        raise NotFound(f"model '{key}' has no version '{version}' (versions: {known})") from None
    current = store.current(key)
    project = project_of(key)
    row = version_row(
        found,
        serving=current is not None and current.version == version,
        acceptance=_acceptance_by_version(sources.acceptance.summary(project)),
        predictions=sources.usage.totals(project),
        history=store.history(key),
        left_out=MANIFEST_ITEMS,
    )
    requests = [
        r
        for r in sources.retraining.list(project)
        if r.get("model_key") == key and r.get("candidate") == version
    ]
    return {"project": project, "key": key, **row, "retraining_requests": requests}


def manifest_summary(manifest: list[dict[str, Any]], limit: int = MANIFEST_ITEMS) -> dict[str, Any]:
    """Items per split, and the items left out with their reasons (the first `limit`;
    `left_out_reasons` counts them all)."""
    splits = Counter(str(e.get("split")) for e in manifest)
    left = [e for e in manifest if e.get("split") == "skipped"]
    return {
        "manifest_entries": len(manifest),
        "by_split": dict(splits),
        "left_out": [{"sample": e.get("sample"), "reason": e.get("reason")} for e in left[:limit]],
        "left_out_reasons": dict(Counter(str(e.get("reason")) for e in left)),
    }
