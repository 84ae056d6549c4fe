"""The dashboard's plots, drawn on the server as inline SVG with matplotlib (no pyplot):
nothing is fetched by the browser, so the page works offline. matplotlib is imported on the
first plot, not when the server starts."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from labelpilot.backends.quality import FINDINGS

_LOCK = threading.Lock()  # matplotlib's font and text caches are not thread-safe
_COLORS = ("#2563eb", "#d97706", "#059669", "#7c3aed", "#dc2626", "#0891b2")
_SERVING = "#16a34a"
_SIZE = re.compile(r'\s(width|height)="[^"]*"')
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
METRIC_NAMES = {
    "map50_95": "mAP50-95",
    "map50": "mAP50",
    "accuracy_top1": "top-1 accuracy",
    "box_map50_95": "box mAP50-95",
    "accuracy_top5": "top-5 accuracy",
}


def _figure(width: float = 7.0, height: float = 3.2) -> Any:
    """A figure outside pyplot: no GUI backend is selected, and the process's matplotlib state
    (other users' backend) is left alone; `savefig` draws with the SVG renderer."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _label(text: object) -> str:
    """Plain text (a '$' would start matplotlib's math mode)."""
    return str(text).replace("$", r"\$")


def _svg(figure: Any, title: str) -> str:
    """The figure as an <svg> element that scales with the page (text kept as text)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    svg = _METADATA.sub("", text[text.index("<svg") :])  # the RDF block names matplotlib
    head, rest = svg.split(">", 1)
    head = _SIZE.sub("", head)
    safe = title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return f'{head} class="plot" role="img" aria-label="{safe}">{rest}'


def _style(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(_label(title), loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel(_label(xlabel))
    ax.set_ylabel(_label(ylabel))
    ax.grid(axis="y", color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _when(at: Any) -> datetime | None:
    return datetime.fromtimestamp(float(at), UTC) if isinstance(at, int | float) else None


def versions_plot(models: Sequence[dict[str, Any]]) -> str | None:
    """Holdout metric of each version over the time it was written, one line per model; the
    serving version ringed. None when no version has a metric."""
    points = [
        (m["key"], v, at)
        for m in models
        for v in m["versions"]
        if v.get("metric") and (at := _when(v.get("written_at"))) is not None
    ]
    if not points:
        return None
    names = {v["metric"]["name"] for _, v, _ in points}
    metric = " / ".join(sorted(METRIC_NAMES.get(n, n) for n in names))
    with _LOCK:
        import matplotlib.dates as mdates

        figure = _figure()
        ax = figure.add_subplot()
        for index, model in enumerate(models):
            mine = [(v, at) for key, v, at in points if key == model["key"]]
            if not mine:
                continue
            color = _COLORS[index % len(_COLORS)]
            xs = [at for _, at in mine]
            ys = [v["metric"]["value"] for v, _ in mine]
            ax.plot(xs, ys, marker="o", color=color, linewidth=1.8, label=_label(model["key"]))
            for (v, at), y in zip(mine, ys, strict=True):
                ax.annotate(
                    _label(v["version"]),
                    (at, y),
                    textcoords="offset points",
                    xytext=(0, 11),
                    ha="center",
                    fontsize=8,
                    color="#374151",
                )
                if v["serving"]:
                    ax.scatter(
                        [at],
                        [y],
                        s=190,
                        facecolors="none",
                        edgecolors=_SERVING,
                        linewidths=2.2,
                        zorder=3,
                        label="serving now" if index == 0 else None,
                    )
        top = max(v["metric"]["value"] for _, v, _ in points)
        ax.set_ylim(0, max(1.0, top * 1.15) if top > 1 else min(1.05, max(0.1, top * 1.3)))
        first, last = min(at for _, _, at in points), max(at for _, _, at in points)
        if (last - first).total_seconds() < 6 * 3600:  # versions minutes apart: an hour's room
            ax.set_xlim(first - timedelta(hours=1), last + timedelta(hours=1))
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        _style(
            ax,
            f"Holdout {metric} per model version (higher is better)",
            "version written (UTC)",
            f"holdout {metric} (0-1)",
        )
        ax.legend(loc="lower right", fontsize=8, frameon=False)
        return _svg(figure, f"Holdout {metric} per model version")


def predictions_plot(per_day: Sequence[dict[str, Any]]) -> str:
    """Images predicted per UTC day, stacked by model version."""
    with _LOCK:
        figure = _figure(height=2.8)
        ax = figure.add_subplot()
        days = [datetime.strptime(d["day"], "%Y-%m-%d") for d in per_day]
        versions = sorted({v for d in per_day for v in d["by_version"]})
        bottom = [0] * len(per_day)
        for index, version in enumerate(versions):
            counts = [d["by_version"].get(version, 0) for d in per_day]
            ax.bar(
                days,
                counts,
                bottom=bottom,
                width=0.8,
                label=_label(version),
                color=_COLORS[index % len(_COLORS)],
            )
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        if not versions:
            ax.text(
                0.5,
                0.5,
                "no predictions in this period",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="#6b7280",
            )
        ax.set_ylim(0, max([*bottom, 1]) * 1.3)
        import matplotlib.dates as mdates
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))
        title = f"Images predicted per day (last {len(per_day)} days)"
        _style(ax, title, "day (UTC)", "images predicted")
        if versions:
            ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=min(3, len(versions)))
        return _svg(figure, title)


def acceptance_plot(rows: Sequence[dict[str, Any]]) -> str | None:
    """Share of predicted regions annotators kept, per model version. None without data."""
    rows = [r for r in rows if r.get("rate") is not None]
    if not rows:
        return None
    with _LOCK:
        figure = _figure(height=max(2.0, 0.55 * len(rows) + 1.2))
        ax = figure.add_subplot()
        labels = [_label(r["model_version"]) for r in rows]
        rates = [100.0 * float(r["rate"]) for r in rows]
        bars = ax.barh(labels, rates, color=_COLORS[2], height=0.6)
        for bar, row, rate in zip(bars, rows, rates, strict=True):
            ax.text(
                min(rate, 100) + 1,
                bar.get_y() + bar.get_height() / 2,
                f"{rate:.0f}%  ({row.get('kept', 0)} of {row.get('predicted', 0)} regions, "
                f"{row.get('annotations', 0)} annotations)",
                va="center",
                fontsize=8,
            )
        ax.set_xlim(0, 160)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.invert_yaxis()
        title = "Predicted regions annotators kept, per version"
        _style(ax, title, "regions kept (%)", "model version")
        ax.grid(axis="x", color="#e5e7eb", linewidth=0.8)
        ax.grid(axis="y", visible=False)
        return _svg(figure, title)


def quality_plot(counts: dict[str, int]) -> str | None:
    """Images with each quality finding (`counts`: finding → images, and "checked": images
    checked). None when the project was never checked."""
    checked = int(counts.get("checked", 0))
    if not checked and not any(counts.values()):
        return None
    names = [*FINDINGS, *sorted(set(counts) - {*FINDINGS, "checked"})]
    with _LOCK:
        figure = _figure(height=3.0)
        ax = figure.add_subplot()
        values = [int(counts.get(n, 0)) for n in names]
        bars = ax.barh([n.replace("_", " ") for n in names], values, color=_COLORS[1], height=0.6)
        for bar, value in zip(bars, values, strict=True):
            ax.text(value, bar.get_y() + bar.get_height() / 2, f" {value}", va="center", fontsize=8)
        from matplotlib.ticker import MaxNLocator

        ax.set_xlim(0, max([*values, 1]) * 1.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.invert_yaxis()
        title = f"Images with each quality finding ({checked:,} images checked)"
        _style(ax, title, "images", "finding")
        ax.grid(axis="x", color="#e5e7eb", linewidth=0.8)
        ax.grid(axis="y", visible=False)
        return _svg(figure, title)
