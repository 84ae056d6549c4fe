"""Sliced inference on huge images: recall and time, labelpilot vs sahi's own call.

    .venv/bin/python -m bench.slicing [--images 2] [--size 4096] [--shapes 300]
                                      [--slice 640] [--overlap 0.2] [--repeat 2] [--json out.json]

Generated `size`² images (labelpilot/synthetic_huge.py) hold `shapes` circles, squares and
triangles of 20-28 px on noise. The shapes model (YOLO11n trained on 160-px images with 32-53
px shapes) sees a slice at the slice's own resolution, so a 20-px shape stays a 20-px shape
there; the whole image letterboxed to the model's input shrinks it to about a pixel.

Three contenders, in this process, on the same images, interleaved `repeat` times:
  unsliced      labelpilot's batched path (YoloModel.predict, the model's own input size)
  labelpilot    backends.slicing.sliced_predict (sahi around the already loaded model; on a
                GPU, one forward pass per batch of slices)
  sahi          sahi.predict.get_sliced_prediction with sahi's UltralyticsDetectionModel
                loaded from the same weights, the same slices, overlap and merge, and its
                default batch_size (1; labelpilot also runs one slice per pass on a CPU)
Recall at IoU 0.5 (same class, each true box matched once); seconds per image (median), wall
clock and this process's CPU time (steadier than the wall clock on a machine shared with other
work).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import bench_main, bench_parser, default_model, median, progress, table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("bench.slicing", __doc__)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--shapes", type=int, default=300, help="shapes per image")
    parser.add_argument("--slice", type=int, default=640)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sahi.models.ultralytics import UltralyticsDetectionModel
    from sahi.predict import get_sliced_prediction

    from labelpilot.backends.slicing import SliceSpec, sliced_predict
    from labelpilot.backends.yolo import YoloModel
    from labelpilot.synthetic_huge import make_huge_image, recall

    weights = str(default_model())
    spec = SliceSpec(args.slice, args.overlap)
    progress(f"generating {args.images} images of {args.size}² with {args.shapes} shapes")
    samples = [make_huge_image(seed=100 + i, size=args.size, count=args.shapes)
               for i in range(args.images)]
    model = YoloModel(weights, device=args.device)
    sahi_model = UltralyticsDetectionModel(model_path=weights, device=args.device,
                                           confidence_threshold=0.25, image_size=spec.size)

    def ours(image: Any) -> list[tuple[str, tuple[float, ...]]]:
        pred = sliced_predict(model, image, spec, conf=0.25)
        return [(i.class_name, (i.box.x1, i.box.y1, i.box.x2, i.box.y2))
                for i in pred.instances if i.box is not None]

    def unsliced(image: Any) -> list[tuple[str, tuple[float, ...]]]:
        pred = model.predict([image], conf=0.25)[0]
        return [(i.class_name, (i.box.x1, i.box.y1, i.box.x2, i.box.y2))
                for i in pred.instances if i.box is not None]

    def sahi(image: Any) -> list[tuple[str, tuple[float, ...]]]:
        result = get_sliced_prediction(
            image[:, :, ::-1], sahi_model, slice_height=spec.size, slice_width=spec.size,
            overlap_height_ratio=spec.overlap, overlap_width_ratio=spec.overlap,
            perform_standard_pred=spec.full_pass,
            postprocess_match_threshold=spec.match_threshold, verbose=0)  # its batch_size: 1
        return [(o.category.name, tuple(o.bbox.to_xyxy())) for o in result.object_prediction_list]

    contenders: dict[str, Callable[[Any], list[tuple[str, tuple[float, ...]]]]] = {
        "unsliced": unsliced, "labelpilot": ours, "sahi": sahi}
    for fn in contenders.values():  # warm-up: the first call sets up ultralytics' predictor
        fn(samples[0].image[: spec.size, : spec.size])
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}  # process CPU time
    recalls: dict[str, list[float]] = {name: [] for name in contenders}
    found_counts: dict[str, list[int]] = {name: [] for name in contenders}
    for round_ in range(args.repeat):
        for n, sample in enumerate(samples):
            for name, fn in contenders.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                found = fn(sample.image)
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                if round_ == 0:
                    recalls[name].append(recall(sample.boxes, found))
                    found_counts[name].append(len(found))
            progress(f"round {round_ + 1}, image {n + 1}: "
                     + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seconds.items()))
    slices = len(spec.tiles(args.size, args.size))
    # each labelpilot call against the sahi call right after it: robust to load that drifts
    pairs = [ours_s / sahi_s for ours_s, sahi_s in zip(seconds["labelpilot"], seconds["sahi"],
                                                        strict=True)]
    return {
        "settings": {**vars(args), "json": str(args.json) if args.json else None,
                     "weights": weights, "slices_per_image": slices,
                     "true_shapes": [len(s.boxes) for s in samples]},
        "modes": {name: {"recall": sum(recalls[name]) / len(recalls[name]),
                         "seconds_per_image": median(seconds[name]),
                         "cpu_seconds_per_image": median(cpu[name]),
                         "found_per_image": sum(found_counts[name]) / len(found_counts[name])}
                  for name in contenders},
        "pair_ratio_median": median(pairs),
        "pair_ratios": pairs,
    }


def render(report: dict[str, Any]) -> str:
    s, modes = report["settings"], report["modes"]
    sahi_s = modes["sahi"]["seconds_per_image"]
    sahi_cpu = modes["sahi"]["cpu_seconds_per_image"]
    rows = [("mode", "recall@0.5", "found/image", "s/image (median)", "vs sahi",
             "CPU s/image", "vs sahi")]
    for name, m in modes.items():
        rows.append((name, f"{m['recall']:.3f}", f"{m['found_per_image']:.0f}",
                     f"{m['seconds_per_image']:.2f}", f"{m['seconds_per_image'] / sahi_s:.2f}x",
                     f"{m['cpu_seconds_per_image']:.2f}",
                     f"{m['cpu_seconds_per_image'] / sahi_cpu:.2f}x"))
    head = (f"sliced inference: {s['images']} images of {s['size']}x{s['size']}, "
            f"{sum(s['true_shapes']) / len(s['true_shapes']):.0f} shapes of 20-28 px each; "
            f"slice {s['slice']} px, overlap {s['overlap']} ({s['slices_per_image']} slices + "
            f"one whole-image pass); {s['repeat']} rounds, device {s['device']}")
    ours = modes["labelpilot"]
    notes = (f"targets: recall with slicing >= 0.8 (measured {ours['recall']:.3f}); "
             f"labelpilot time <= 1.2x sahi's (measured "
             f"{ours['seconds_per_image'] / sahi_s:.2f}x on the medians; median of the "
             f"per-call pairs {report['pair_ratio_median']:.2f}x, range "
             f"{min(report['pair_ratios']):.2f}-{max(report['pair_ratios']):.2f}x)")
    return "\n".join([head, "", table(rows), "", notes])


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(parse_args(argv), run, render)


if __name__ == "__main__":
    sys.exit(main())
