"""Which labelled images train, by image quality: a training image that repeats a holdout image
(the same or a near-identical perceptual hash) is left out, since it would leak the holdout into
training and flatter the candidate; with the project setting `low_quality=skip`, dark,
overexposed, blurry and near-constant training images are left out too. Holdout images always
stay (the holdout must stay comparable across versions). Each one left out is named, with the
reason, in the version's manifest."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from labelpilot.backends.quality import LOW_QUALITY, QualityReport, check_image
from labelpilot.trainers.dataset import sample_splits
from labelpilot.trainers.quality_settings import thresholds_from
from labelpilot.trainers.samples import Sample

if TYPE_CHECKING:
    from labelpilot.trainers.pipeline import TrainParams

log = logging.getLogger(__name__)


def _report(sample: Sample, params: TrainParams) -> QualityReport | None:
    image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
    if image is None:
        return None  # the dataset builder reports an unreadable file itself
    return check_image(image, thresholds_from(params))


def screen_samples(
    samples: Sequence[Sample],
    params: TrainParams,
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> tuple[list[Sample], list[dict[str, Any]]]:
    """(samples that train or evaluate, manifest entries of those left out). Video frames
    (samples with a `group`) are split by video already and are not compared by hash: frames
    of a fixed camera look alike without leaking anything."""
    thresholds = thresholds_from(params)
    splits = sample_splits(samples)
    reports = {s.sample_id: _report(s, params) for s in samples}
    holdout = [
        (s.sample_id, r.phash)
        for s in samples
        if splits[s.sample_id] == "holdout"
        and not s.group
        and (r := reports[s.sample_id]) is not None
        and r.phash
    ]
    held = np.array([int(h, 16) for _, h in holdout], dtype=np.uint64)
    kept: list[Sample] = []
    left: list[dict[str, Any]] = []
    for sample in samples:
        report = reports[sample.sample_id]
        reason = ""
        if report is not None and splits[sample.sample_id] != "holdout":
            if not sample.group and report.phash and held.size:
                bits = np.bitwise_count(held ^ np.uint64(int(report.phash, 16)))
                closest = int(np.argmin(bits))
                if int(bits[closest]) <= thresholds.near_duplicate:
                    kind = "duplicate" if int(bits[closest]) == 0 else "near duplicate"
                    reason = (
                        f"{kind} of holdout image {holdout[closest][0]} "
                        "(would leak the holdout into training)"
                    )
            low = [f for f in report.findings if f in LOW_QUALITY]
            if not reason and low and params.low_quality == "skip":
                reason = f"low quality: {', '.join(low)} (setting low_quality=skip)"
        if reason:
            left.append(
                {
                    "sample": sample.sample_id,
                    "split": "skipped",
                    "reason": reason,
                    **sample.provenance,
                }
            )
        else:
            kept.append(sample)
    if left:
        log.warning(
            "%d training image(s) left out by quality: %s",
            len(left),
            "; ".join(f"{e['sample']}: {e['reason']}" for e in left),
        )
        progress({"phase": "dataset", "quality_skipped": [e["sample"] for e in left]})
    return kept, left
