"""The CVAT tracker function before and after the occlusion/scale work, on the same clips.

    .venv/bin/python -m bench.cvat_tracker [--seeds 0,1,2,3,4] [--frames 72] [--json out.json]

"before" is `bench._cvat_tracker_v2` (a frozen copy of `labelpilot.adapters.cvat.tracker` as it
was, state kind labelpilot-template-v2); "after" is the tracker as it is now. Each truth object
of the generated clips (`labelpilot.synthetic_video.make_clip(seed, frames=72, objects=3)`,
256x192: the first object passes behind a pillar, the last leaves the frame), plus two clips
drawn here with one object growing or shrinking (side 36 <-> 84 px over the clip, moving), is
tracked as CVAT's UI does: `init_state` with the truth box on the object's first frame, then
`track` on every later frame to the end of the clip, the state round-tripped through JSON.

Per tracker: mean IoU with the truth on the frames where the truth has a box (no shape = 0),
success rate (IoU >= 0.5), the same on the truth frames after the occlusion (the occluded
object, after its gap), shapes returned after the leaving object's last truth frame (false
boxes), the same for the scale clips, and ms per `track` call (on these clips, and on 640x480
renders of the same kind of clip). Numbers are printed, never asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from bench import _cvat_tracker_v2 as before_tracker
from labelpilot.adapters.cvat import tracker as after_tracker
from labelpilot.backends.shapes import BBox
from labelpilot.synthetic import CLASS_COLORS, ShapeBox, _draw
from labelpilot.synthetic_video import make_clip

TRACKERS: dict[str, ModuleType] = {"before": before_tracker, "after": after_tracker}


@dataclass(frozen=True)
class Case:
    """One object to follow: its frames (1-based picture source), truth boxes, and role."""

    name: str
    render: Callable[[int], np.ndarray]
    frames: int
    truth: dict[int, BBox]
    role: str  # "occluded", "leaving", "plain" or "scale"


@dataclass
class Result:
    ious: list[float]  # on truth frames after the first
    after_occlusion: list[float]  # IoU on truth frames after the gap (occluded objects)
    after_leaving: int  # shapes returned after the leaving object's last truth frame
    leaving_frames: int
    step_ms: list[float]


def clip_cases(seeds: list[int], frames: int) -> list[Case]:
    cases: list[Case] = []
    for seed in seeds:
        clip = make_clip(seed, frames=frames, objects=3)
        for index, track in enumerate(clip.tracks):
            role = "occluded" if index == 0 else "leaving" if index == 2 else "plain"
            cases.append(Case(f"seed{seed}-{track.class_name}", clip.render, clip.frames,
                              dict(track.boxes), role))
    return cases


def scale_case(seed: int, frames: int, grow: bool) -> Case:
    """One shape on the clips' kind of background (static noise + per-frame shake), its side
    going 36 -> 84 px (or back) linearly while its centre drifts across the frame."""
    width, height = 320, 240
    base = np.random.default_rng(seed)
    level = int(base.integers(90, 170))
    background = np.clip(base.normal(level, 8, (height, width, 3)), 0, 255)
    name = ("circle", "square", "triangle")[seed % 3]
    start, end = (36, 84) if grow else (84, 36)
    truth: dict[int, BBox] = {}
    for n in range(1, frames + 1):
        t = (n - 1) / (frames - 1)
        side = start + (end - start) * t
        cx, cy = 100 + 120 * t, 90 + 60 * t
        truth[n] = BBox(round(cx - side / 2), round(cy - side / 2), round(cx + side / 2),
                        round(cy + side / 2))

    def render(n: int) -> np.ndarray:
        shake = np.random.default_rng((seed, n)).normal(0, 3, background.shape)
        image = np.clip(background + shake, 0, 255).astype(np.uint8)
        b = truth[n]
        _draw(image, ShapeBox(name, b.x1, b.y1, b.x2, b.y2), CLASS_COLORS[name])
        return image

    return Case(f"scale{seed}-{'grow' if grow else 'shrink'}", render, frames, truth, "scale")


def iou(a: tuple[float, float, float, float], b: BBox) -> float:
    iw = max(0.0, min(a[2], b.x2) - max(a[0], b.x1))
    ih = max(0.0, min(a[3], b.y2) - max(a[1], b.y1))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def run_case(module: ModuleType, case: Case, pictures: dict[int, np.ndarray]) -> Result:
    first, last_truth = min(case.truth), max(case.truth)
    b = case.truth[first]
    shape = module.TrackedShape("rectangle", [b.x1, b.y1, b.x2, b.y2])
    state: dict[str, Any] = json.loads(json.dumps(module.init_state(pictures[first], shape)))
    gap_end = _gap_end(case)
    result = Result([], [], 0, 0, [])
    for n in range(first + 1, case.frames + 1):
        started = time.perf_counter()
        found, state = module.track(pictures[n], state)
        result.step_ms.append((time.perf_counter() - started) * 1000)
        state = json.loads(json.dumps(state))  # CVAT round-trips it
        box = module.shape_box(found) if found is not None else None
        if n in case.truth:
            value = iou(box, case.truth[n]) if box is not None else 0.0
            result.ious.append(value)
            if gap_end is not None and n > gap_end:
                result.after_occlusion.append(value)
        elif case.role == "leaving" and n > last_truth:
            result.leaving_frames += 1
            result.after_leaving += box is not None
    return result


def _gap_end(case: Case) -> int | None:
    """The last missing truth frame inside the occluded object's truth span."""
    if case.role != "occluded":
        return None
    frames = sorted(case.truth)
    gaps = [f for f in range(frames[0], frames[-1]) if f not in case.truth]
    return max(gaps) if gaps else None


def timing_640(module: ModuleType, seed: int, frames: int) -> list[float]:
    """ms per `track` call on 640x480 renders (objects of about 120 px)."""
    clip = make_clip(seed, frames=frames, objects=3, width=640, height=480)
    out: list[float] = []
    for track in clip.tracks:
        first = min(track.boxes)
        b = track.boxes[first]
        state = module.init_state(clip.render(first),
                                  module.TrackedShape("rectangle", [b.x1, b.y1, b.x2, b.y2]))
        for n in range(first + 1, min(clip.frames, first + 24) + 1):
            image = clip.render(n)
            started = time.perf_counter()
            _, state = module.track(image, state)
            out.append((time.perf_counter() - started) * 1000)
    return out


def summarise(results: list[tuple[Case, Result]], ms640: list[float]) -> dict[str, float]:
    ious = [v for _, r in results for v in r.ious]
    occ = [v for c, r in results if c.role == "occluded" for v in r.after_occlusion]
    scale = [v for c, r in results if c.role == "scale" for v in r.ious]
    steps = [v for _, r in results for v in r.step_ms]
    return {
        "mean_iou": statistics.fmean(ious),
        "success": statistics.fmean(v >= 0.5 for v in ious),
        "after_occlusion_iou": statistics.fmean(occ) if occ else float("nan"),
        "after_occlusion_success": statistics.fmean(v >= 0.5 for v in occ) if occ
        else float("nan"),
        "after_occlusion_frames": len(occ),
        "after_occlusion_tracked": sum(v >= 0.5 for v in occ),
        "false_after_leaving": sum(r.after_leaving for c, r in results if c.role == "leaving"),
        "leaving_frames": sum(r.leaving_frames for c, r in results if c.role == "leaving"),
        "scale_iou": statistics.fmean(scale) if scale else float("nan"),
        "scale_success": statistics.fmean(v >= 0.5 for v in scale) if scale else float("nan"),
        "ms_per_step": statistics.fmean(steps),
        "ms_per_step_p95": float(np.percentile(steps, 95)),
        "ms_per_step_640": statistics.fmean(ms640),
        "ms_per_step_640_p95": float(np.percentile(ms640, 95)),
    }


ROWS = [
    ("mean IoU (truth frames)", "mean_iou", "{:.3f}"),
    ("success rate (IoU >= 0.5)", "success", "{:.3f}"),
    ("after occlusion: mean IoU", "after_occlusion_iou", "{:.3f}"),
    ("after occlusion: frames tracked", "after_occlusion_tracked", "{:.0f}"),
    ("  (of truth frames after it)", "after_occlusion_frames", "{:.0f}"),
    ("false boxes after leaving", "false_after_leaving", "{:.0f}"),
    ("  (of frames after leaving)", "leaving_frames", "{:.0f}"),
    ("scale clips: mean IoU", "scale_iou", "{:.3f}"),
    ("scale clips: success rate", "scale_success", "{:.3f}"),
    ("ms per step (256x192/320x240)", "ms_per_step", "{:.2f}"),
    ("  p95", "ms_per_step_p95", "{:.2f}"),
    ("ms per step (640x480)", "ms_per_step_640", "{:.2f}"),
    ("  p95", "ms_per_step_640_p95", "{:.2f}"),
]


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| metric | before (v2) | after (v3) | after / before |", "|---|---|---|---|"]
    for label, key, fmt in ROWS:
        b, a = summary["before"][key], summary["after"][key]
        ratio = f"{a / b:.2f}x" if b else ("–" if not a else "∞")
        lines.append(f"| {label} | {fmt.format(b)} | {fmt.format(a)} | {ratio} |")
    return "\n".join(lines)


def per_case(rows: dict[str, list[tuple[Case, Result]]]) -> str:
    lines = ["| case | role | before IoU / success | after IoU / success |", "|---|---|---|---|"]
    for (case, rb), (_, ra) in zip(rows["before"], rows["after"], strict=True):
        cells = [f"{statistics.fmean(r.ious):.3f} / {statistics.fmean(v >= .5 for v in r.ious):.2f}"
                 for r in (rb, ra)]
        lines.append(f"| {case.name} | {case.role} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--frames", type=int, default=72)
    parser.add_argument("--json", help="write the summary and per-case figures here")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [*clip_cases(seeds, args.frames), scale_case(seeds[0], 48, True),
             scale_case(seeds[-1] + 1, 48, False)]
    rows: dict[str, list[tuple[Case, Result]]] = {name: [] for name in TRACKERS}
    for case in cases:
        pictures = {n: case.render(n) for n in range(1, case.frames + 1)}
        for name, module in TRACKERS.items():
            rows[name].append((case, run_case(module, case, pictures)))
    summary = {name: summarise(rows[name], timing_640(module, seeds[0], args.frames))
               for name, module in TRACKERS.items()}
    print(f"{len(cases)} objects: seeds {args.seeds} x 3 objects ({args.frames} frames, 256x192)"
          f" + 2 scale clips (48 frames, 320x240); OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}\n")
    print(table(summary))
    print()
    print(per_case(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"summary": summary, "cases": {
                name: [{"case": c.name, "role": c.role, **asdict(r)} for c, r in rs]
                for name, rs in rows.items()}}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
