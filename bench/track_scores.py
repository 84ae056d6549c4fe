"""Multi-object tracking scores (CLEAR-MOT's MOTA, IDF1, ID switches) of predicted box tracks
against ground truth, for tests and benchmarks.

The per-frame matching and the metrics are motmetrics' (MIT licence). Its `iou_matrix` calls
`np.asfarray`, which numpy 2 removed (motmetrics 1.4.0), so the IoU distances are computed
here with the same convention: distance = 1 - IoU, no match (NaN) where IoU < the threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import motmetrics as mm
import numpy as np

from labelpilot.backends.shapes import BBox

_METRICS = ["mota", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects"]
_MATCHED_EVENTS = ("MATCH", "SWITCH")  # a switch is a match to another predicted id


@dataclass(frozen=True)
class TrackScores:
    """MOTA and IDF1 are NaN when the truth has no box on the scored frames."""

    mota: float
    idf1: float
    id_switches: int
    mean_iou: float  # over the matched truth boxes (0 when none is matched)
    coverage: float  # matched truth boxes / truth boxes (0 when there are none)
    false_positives: int
    misses: int
    truth_boxes: int


def score_tracks(
    truth: Mapping[int, Mapping[int, BBox]],
    predicted: Mapping[int, Mapping[int, BBox]],
    frames: Iterable[int],
    *,
    iou_threshold: float = 0.5,
) -> TrackScores:
    """Score `predicted` against `truth` (each: track id -> {frame -> box}) on `frames`.

    A predicted box matches a truth box on a frame when their IoU >= iou_threshold; boxes on
    frames not in `frames` are ignored."""
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    truth_by_frame = _by_frame(truth)
    predicted_by_frame = _by_frame(predicted)
    acc = mm.MOTAccumulator(auto_id=False)
    for frame in sorted(set(frames)):
        t_ids, t_boxes = _unzip(truth_by_frame.get(frame, {}))
        p_ids, p_boxes = _unzip(predicted_by_frame.get(frame, {}))
        acc.update(t_ids, p_ids, _iou_distances(t_boxes, p_boxes, iou_threshold), frameid=frame)
    summary = mm.metrics.create().compute(acc, metrics=_METRICS, name="all")
    row = summary.loc["all"]
    events = acc.mot_events
    matched = events[events["Type"].isin(_MATCHED_EVENTS)] if len(events) else events
    truth_boxes = int(row["num_objects"])
    return TrackScores(
        mota=float(row["mota"]),
        idf1=float(row["idf1"]),
        id_switches=int(row["num_switches"]),
        mean_iou=float((1 - matched["D"]).mean()) if len(matched) else 0.0,
        coverage=len(matched) / truth_boxes if truth_boxes else 0.0,
        false_positives=int(row["num_false_positives"]),
        misses=int(row["num_misses"]),
        truth_boxes=truth_boxes,
    )


def _by_frame(tracks: Mapping[int, Mapping[int, BBox]]) -> dict[int, dict[int, BBox]]:
    out: dict[int, dict[int, BBox]] = {}
    for track_id, boxes in tracks.items():
        for frame, box in boxes.items():
            out.setdefault(frame, {})[track_id] = box
    return out


def _unzip(boxes: Mapping[int, BBox]) -> tuple[list[int], np.ndarray]:
    ids = sorted(boxes)
    coords = np.array([(boxes[i].x1, boxes[i].y1, boxes[i].x2, boxes[i].y2) for i in ids],
                      dtype=float).reshape(-1, 4)
    return ids, coords


def _iou_distances(truth: np.ndarray, predicted: np.ndarray, iou_threshold: float) -> np.ndarray:
    """1 - IoU for every (truth, predicted) pair, NaN where IoU < iou_threshold."""
    if not len(truth) or not len(predicted):
        return np.empty((len(truth), len(predicted)))
    t, p = truth[:, None, :], predicted[None, :, :]
    iw = np.maximum(np.minimum(t[..., 2], p[..., 2]) - np.maximum(t[..., 0], p[..., 0]), 0.0)
    ih = np.maximum(np.minimum(t[..., 3], p[..., 3]) - np.maximum(t[..., 1], p[..., 1]), 0.0)
    inter = iw * ih
    area_t = np.maximum(t[..., 2] - t[..., 0], 0.0) * np.maximum(t[..., 3] - t[..., 1], 0.0)
    area_p = np.maximum(p[..., 2] - p[..., 0], 0.0) * np.maximum(p[..., 3] - p[..., 1], 0.0)
    union = area_t + area_p - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return np.where(iou >= iou_threshold, 1 - iou, np.nan)
