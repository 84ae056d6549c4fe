"""Video tracking: labelpilot's pipeline against raw ultralytics `model.track`, in one run.

    .venv/bin/python -m bench.video [--seeds 0,1,2] [--frames 240] [--objects 3]
                                    [--tracker bytetrack|botsort] [--repeat 3] [--json out.json]

On generated clips (`labelpilot.synthetic_video.make_clip`, 256x192 at 12 fps, written as MP4
H.264 to a temporary directory; exact per-frame truth), with the same weights (the cached shapes
model unless --model), it measures:

1. throughput in frames/s: labelpilot = file bytes -> `read_frames` (PyAV, by timestamps) ->
   `track_video` (batches of 8 through `YoloModel`, the tracker in frame order) -> `thin_track`
   of the kept tracks; raw = `YOLO.track(source=path, stream=True, persist=False)` consumed
   fully (OpenCV decoding, one frame per model call). Both are warmed up on a short clip first;
   per clip the two alternate (the first one changes each repeat); median of --repeat runs;
2. tracking quality against the truth (bench.track_scores: MOTA, IDF1, ID switches) of
   labelpilot's kept tracks (>= MIN_TRACK_FRAMES boxes, as the LS adapter keeps) and of the
   raw `result.boxes.id` tracks (all of them);
3. keyframes: `thin_track` at the adapter's default min_iou (`VideoLimits.keyframe_iou`, the
   default of LABELPILOT_VIDEO_KEYFRAME_IOU) as a share of each kept track's boxes; the mean
   IoU of what Label Studio draws from them (`interpolate`) against the dense tracked boxes on
   the tracked frames; and MOTA/IDF1 of those drawn boxes against the truth.

Frame numbers: raw ultralytics' i-th result (from 0) is Label Studio frame i + 1 (the clips are
constant-rate and `read_frames` runs at the file's rate). Numbers are printed, never asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported (via ultralytics)

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, bench_parser, median, progress, report_run, table
from bench.track_scores import TrackScores, score_tracks
from labelpilot.backends.offline import configure_ultralytics
from labelpilot.backends.shapes import BBox

THROUGHPUT_TARGET = 0.9
IDF1_TARGET = 0.85
MOTA_TARGET = 0.80
KEYFRAME_SHARE_TARGET = 0.10
INTERP_IOU_TARGET = 0.90
BATCH = 8  # VideoLimits.batch, what the LS adapter tracks with
WARM_FRAMES = 24

Boxes = dict[int, dict[int, BBox]]  # track id -> {frame -> box}


# --------------------------------------------------------------------------- contenders


@dataclass
class Run:
    """One timed pass over a clip: seconds, frames seen, and the tracks (id -> frame -> box)."""

    seconds: float
    frames: int
    tracks: Boxes
    keyframes: dict[int, list[Any]]  # labelpilot only: kept track id -> its keyframes


class Raw:
    """The plain ultralytics API on the video file, as a user would call it."""

    def __init__(self, weights: Path, tracker: str):
        from ultralytics import YOLO

        self.model = YOLO(str(weights))
        self.tracker = f"{tracker}.yaml"

    def run(self, path: Path, last_frame: int) -> Run:
        tracks: Boxes = {}
        frames = 0
        started = time.perf_counter()
        results = self.model.track(source=str(path), stream=True, tracker=self.tracker,
                                   verbose=False, persist=False)
        for frames, result in enumerate(results, start=1):
            ids = result.boxes.id
            if ids is None:
                continue
            xyxy = result.boxes.xyxy.cpu().numpy()
            for tid, (x1, y1, x2, y2) in zip(ids.int().cpu().tolist(), xyxy, strict=True):
                tracks.setdefault(int(tid), {})[frames] = BBox(*map(float, (x1, y1, x2, y2)))
        return Run(time.perf_counter() - started, frames, tracks, {})


class Labelpilot:
    """What the LS adapter does with a clip (`track_clip` minus the region JSON)."""

    def __init__(self, weights: Path, tracker: str, min_iou: float, min_frames: int):
        from labelpilot.backends.tracking import TrackerSpec
        from labelpilot.backends.yolo import YoloModel

        self.model = YoloModel(str(weights))
        self.spec = TrackerSpec(tracker)
        self.min_iou = min_iou
        self.min_frames = min_frames

    def run(self, path: Path, last_frame: int, fps: float) -> Run:
        from labelpilot.backends.keyframes import thin_track
        from labelpilot.backends.tracking import track_video
        from labelpilot.backends.video import read_frames

        started = time.perf_counter()
        data = path.read_bytes()
        seen: list[int] = []
        frames = read_frames(data, fps)
        found = track_video(self.model, frames, spec=self.spec, batch=BATCH,
                            on_frame=seen.append)
        kept = [t for t in found if len(t.boxes) >= self.min_frames]
        keyframes = {t.track_id: thin_track(t.boxes, min_iou=self.min_iou, last_frame=last_frame)
                     for t in kept}
        seconds = time.perf_counter() - started
        tracks = {t.track_id: {b.frame: b.box for b in t.boxes} for t in kept}
        return Run(seconds, len(seen), tracks, keyframes)


# --------------------------------------------------------------------------- scoring


def scores_dict(s: TrackScores) -> dict[str, Any]:
    return asdict(s)


def keyframe_stats(run: Run, truth: Boxes, last_frame: int) -> dict[str, Any]:
    """Keyframe share per kept track, drawn-vs-dense IoU, and the drawn tracks' scores."""
    from labelpilot.backends.keyframes import box_iou, interpolate

    shares, ious = [], []
    drawn: Boxes = {}
    for tid, keys in run.keyframes.items():
        dense = run.tracks[tid]
        shares.append(len(keys) / len(dense))
        drawn[tid] = interpolate(keys, last_frame)
        ious.extend(box_iou(drawn[tid][f], box) for f, box in dense.items())
    total_keys = sum(len(k) for k in run.keyframes.values())
    total_boxes = sum(len(t) for t in run.tracks.values())
    return {
        "tracks": len(run.keyframes),
        "keyframes": total_keys,
        "boxes": total_boxes,
        "share_mean": statistics.fmean(shares) if shares else float("nan"),
        "share_max": max(shares, default=float("nan")),
        "share_pooled": total_keys / total_boxes if total_boxes else float("nan"),
        "interp_iou_mean": statistics.fmean(ious) if ious else float("nan"),
        "interp_iou_min": min(ious, default=float("nan")),
        "drawn": scores_dict(score_tracks(truth, drawn, range(1, last_frame + 1))),
    }


# --------------------------------------------------------------------------- bench


def make_clips(directory: Path, seeds: Sequence[int], frames: int, objects: int,
               size: tuple[int, int], fps: float) -> list[tuple[Any, Path]]:
    from labelpilot.synthetic_video import make_clip, write_clip

    clips = []
    for seed in seeds:
        clip = make_clip(seed, frames=frames, objects=objects, width=size[0], height=size[1],
                         fps=fps)
        clips.append((clip, write_clip(clip, directory / f"clip-{seed}.mp4")))
    return clips


def timed(runs: Mapping[str, Callable[[], Run]], repeat: int, flip: bool) -> dict[str, list[Run]]:
    """`repeat` rounds of every contender; the first contender changes each round."""
    names = list(runs)
    out: dict[str, list[Run]] = {name: [] for name in names}
    for r in range(repeat):
        order = names if (r + flip) % 2 == 0 else names[::-1]
        for name in order:
            out[name].append(runs[name]())
    return out


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from labelpilot.adapters.label_studio.video import VideoLimits
    from labelpilot.backends.tracking import MIN_TRACK_FRAMES
    from labelpilot.shapes_model import ensure_shapes_model

    weights = (args.model or ensure_shapes_model(REPO / ".cache" / "models")).resolve()
    min_iou = VideoLimits().keyframe_iou
    settings = {
        "seeds": args.seeds, "frames": args.frames, "objects": args.objects,
        "size": f"{args.width}x{args.height}", "fps": args.fps, "tracker": args.tracker,
        "repeat": args.repeat, "batch": BATCH, "model": str(weights), "min_iou": min_iou,
        "min_track_frames": MIN_TRACK_FRAMES, "omp_threads": os.environ["OMP_NUM_THREADS"],
        "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        size = (args.width, args.height)
        progress(f"writing {len(args.seeds)} clips of {args.frames} frames...")
        clips = make_clips(Path(tmp), args.seeds, args.frames, args.objects, size, args.fps)
        (warm_clip, warm_path), = make_clips(Path(tmp), [10_000], WARM_FRAMES, args.objects,
                                             size, args.fps)
        raw = Raw(weights, args.tracker)
        ours = Labelpilot(weights, args.tracker, min_iou, MIN_TRACK_FRAMES)
        progress("warming up both...")
        for _ in range(2):
            raw.run(warm_path, warm_clip.frames)
            ours.run(warm_path, warm_clip.frames, warm_clip.fps)
        for index, (clip, path) in enumerate(clips):
            progress(f"clip seed {clip.seed}: {args.repeat} alternating runs of each...")
            runs = timed({
                "raw": lambda c=clip, p=path: raw.run(p, c.frames),
                "labelpilot": lambda c=clip, p=path: ours.run(p, c.frames, c.fps),
            }, args.repeat, bool(index % 2))
            rows.append(clip_row(clip, runs))
    settings["load_after"] = os.getloadavg()[0]
    return {"settings": settings, "clips": rows, "mean": mean_row(rows)}


def clip_row(clip: Any, runs: dict[str, list[Run]]) -> dict[str, Any]:
    truth: Boxes = {t.track_id: t.boxes for t in clip.tracks}
    frames = range(1, clip.frames + 1)
    row: dict[str, Any] = {"seed": clip.seed, "truth_tracks": len(truth),
                           "truth_boxes": sum(len(b) for b in truth.values())}
    for name, series in runs.items():
        last = series[-1]
        if last.frames != clip.frames:
            raise RuntimeError(f"{name} saw {last.frames} frames of {clip.frames}")
        row[name] = {
            "fps": median([r.frames / r.seconds for r in series]),
            "seconds": [r.seconds for r in series],
            "tracks": len(last.tracks),
            "scores": scores_dict(score_tracks(truth, last.tracks, frames)),
        }
    row["ratio"] = row["labelpilot"]["fps"] / row["raw"]["fps"]
    row["keyframes"] = keyframe_stats(runs["labelpilot"][-1], truth, clip.frames)
    return row


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.fmean(get(r) for r in rows)

    out: dict[str, Any] = {}
    for name in ("raw", "labelpilot"):
        out[name] = {
            "fps": mean(lambda r, n=name: r[n]["fps"]),
            "tracks": mean(lambda r, n=name: r[n]["tracks"]),
            "mota": mean(lambda r, n=name: r[n]["scores"]["mota"]),
            "idf1": mean(lambda r, n=name: r[n]["scores"]["idf1"]),
            "id_switches": mean(lambda r, n=name: r[n]["scores"]["id_switches"]),
        }
    out["ratio"] = out["labelpilot"]["fps"] / out["raw"]["fps"]
    kf = [r["keyframes"] for r in rows]
    out["keyframes"] = {
        "share_mean": statistics.fmean(k["share_mean"] for k in kf),
        "share_max": max(k["share_max"] for k in kf),
        "share_pooled": sum(k["keyframes"] for k in kf) / sum(k["boxes"] for k in kf),
        "interp_iou_mean": statistics.fmean(k["interp_iou_mean"] for k in kf),
        "interp_iou_min": min(k["interp_iou_min"] for k in kf),
        "drawn_mota": statistics.fmean(k["drawn"]["mota"] for k in kf),
        "drawn_idf1": statistics.fmean(k["drawn"]["idf1"] for k in kf),
    }
    return out


# --------------------------------------------------------------------------- report

HEADER = ("clip", "raw f/s", "lp f/s", "ratio", "raw MOTA", "raw IDF1", "raw IDsw",
          "lp MOTA", "lp IDF1", "lp IDsw", "tracks t/raw/lp", "kf share", "drawn IoU",
          "drawn MOTA", "drawn IDF1")


def render(report: dict[str, Any]) -> str:
    s, mean = report["settings"], report["mean"]
    head = (
        f"{len(s['seeds'])} clips (seeds {','.join(map(str, s['seeds']))}) x {s['frames']} "
        f"frames, {s['size']} at {s['fps']:g} fps, {s['objects']} objects, MP4 H.264; tracker "
        f"{s['tracker']}; median of {s['repeat']} alternating runs; labelpilot batch "
        f"{s['batch']}; keyframe min_iou {s['min_iou']}; kept tracks >= {s['min_track_frames']} "
        f"boxes\nOMP_NUM_THREADS={s['omp_threads']}, {s['cpus']} CPUs, load avg "
        f"{s['load_before']:.2f} -> {s['load_after']:.2f}; model {s['model']}\n"
    )
    rows: list[tuple[str, ...]] = [HEADER]
    for r in report["clips"]:
        raw, lp, kf = r["raw"]["scores"], r["labelpilot"]["scores"], r["keyframes"]
        rows.append((
            f"seed {r['seed']}", f"{r['raw']['fps']:.1f}", f"{r['labelpilot']['fps']:.1f}",
            f"{r['ratio']:.2f}x", f"{raw['mota']:.3f}", f"{raw['idf1']:.3f}",
            str(raw["id_switches"]), f"{lp['mota']:.3f}", f"{lp['idf1']:.3f}",
            str(lp["id_switches"]),
            f"{r['truth_tracks']}/{r['raw']['tracks']}/{r['labelpilot']['tracks']}",
            f"{100 * kf['share_mean']:.1f} %", f"{kf['interp_iou_mean']:.3f}",
            f"{kf['drawn']['mota']:.3f}", f"{kf['drawn']['idf1']:.3f}",
        ))
    raw, lp, kf = mean["raw"], mean["labelpilot"], mean["keyframes"]
    rows.append((
        "mean", f"{raw['fps']:.1f}", f"{lp['fps']:.1f}", f"{mean['ratio']:.2f}x",
        f"{raw['mota']:.3f}", f"{raw['idf1']:.3f}", f"{raw['id_switches']:.1f}",
        f"{lp['mota']:.3f}", f"{lp['idf1']:.3f}", f"{lp['id_switches']:.1f}",
        f"-/{raw['tracks']:.1f}/{lp['tracks']:.1f}", f"{100 * kf['share_mean']:.1f} %",
        f"{kf['interp_iou_mean']:.3f}", f"{kf['drawn_mota']:.3f}", f"{kf['drawn_idf1']:.3f}",
    ))
    legend = (
        "lp = labelpilot (read_frames + track_video + thin_track); raw = YOLO.track(stream=True)."
        "\nkf share = keyframes / tracked boxes, mean over kept tracks (max "
        f"{100 * kf['share_max']:.1f} %; all tracks pooled "
        f"{100 * kf['share_pooled']:.1f} %); drawn = the boxes LS interpolates from the keyframes: "
        f"IoU vs the dense tracked boxes (min {kf['interp_iou_min']:.3f}), MOTA/IDF1 vs truth."
    )
    return "\n".join([head, table(rows), "", legend, "", targets(mean)])


def targets(mean: dict[str, Any]) -> str:
    lp, kf = mean["labelpilot"], mean["keyframes"]
    checks = [
        ("throughput vs raw", mean["ratio"], f">= {THROUGHPUT_TARGET}x",
         mean["ratio"] >= THROUGHPUT_TARGET, f"{mean['ratio']:.2f}x"),
        ("labelpilot IDF1", lp["idf1"], f">= {IDF1_TARGET}", lp["idf1"] >= IDF1_TARGET,
         f"{lp['idf1']:.3f}"),
        ("labelpilot MOTA", lp["mota"], f">= {MOTA_TARGET}", lp["mota"] >= MOTA_TARGET,
         f"{lp['mota']:.3f}"),
        ("keyframes / track frames", kf["share_mean"], f"<= {KEYFRAME_SHARE_TARGET:.0%}",
         kf["share_mean"] <= KEYFRAME_SHARE_TARGET, f"{100 * kf['share_mean']:.1f} %"),
        ("drawn vs dense IoU", kf["interp_iou_mean"], f">= {INTERP_IOU_TARGET}",
         kf["interp_iou_mean"] >= INTERP_IOU_TARGET, f"{kf['interp_iou_mean']:.3f}"),
    ]
    rows = [("target (mean row)", "measured", "goal", "")]
    rows += [(name, shown, goal, "met" if ok else "NOT MET")
             for name, _, goal, ok, shown in checks]
    return "targets\n" + table(rows)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("python -m bench.video", __doc__)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 1, 2], help="clip seeds, comma-separated (0,1,2)")
    parser.add_argument("--frames", type=int, default=240, help="frames per clip (240)")
    parser.add_argument("--objects", type=int, default=3, help="objects per clip, 1..3 (3)")
    parser.add_argument("--fps", type=float, default=12.0, help="clip frame rate (12)")
    parser.add_argument("--width", type=int, default=256, help="clip width in px (256)")
    parser.add_argument("--height", type=int, default=192, help="clip height in px (192)")
    parser.add_argument("--tracker", choices=("bytetrack", "botsort"), default="bytetrack",
                        help="tracker for both contenders (bytetrack)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per clip each (3)")
    parser.add_argument("--model", type=Path, help="weights (default: the cached shapes model)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_ultralytics(REPO / ".ultralytics")
    return report_run(lambda: run_bench(args), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
