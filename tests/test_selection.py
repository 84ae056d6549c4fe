"""Active-learning selection on hand-built scores, and the scorer on the real shapes model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from labelpilot.backends.shapes import BBox
from labelpilot.backends.yolo_scoring import ImageScore, ScoredDetection
from labelpilot.trainers.selection import (
    STRATEGIES,
    SelectionError,
    image_uncertainties,
    quota_shortfall,
    region_uncertainty,
    select,
)

CLASSES = ("circle", "square", "triangle")
BOX = BBox(0, 0, 10, 10)


def det(*probs: float) -> ScoredDetection:
    return ScoredDetection(BOX, np.array(probs, dtype=np.float32))


def image(*detections: ScoredDetection, feat: tuple[float, ...] = (0.0, 0.0)) -> ImageScore:
    return ImageScore(tuple(detections), np.array(feat, dtype=np.float32))


def spread_features(n: int, seed: int = 0) -> list[tuple[float, ...]]:
    """n far-apart feature vectors (distinct axes of a random rotation)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return [tuple(float(v) for v in row) for row in q]


# --------------------------------------------------------------------------- per region


@pytest.mark.parametrize("kind", ["margin", "entropy"])
def test_region_uncertainty_orders_confident_below_confused(kind):
    confident = region_uncertainty(np.array([0.95, 0.01, 0.01]), kind)
    class_confusion = region_uncertainty(np.array([0.5, 0.45, 0.01]), kind)
    maybe_object = region_uncertainty(np.array([0.5, 0.0, 0.0]), kind)  # object or background?
    background = region_uncertainty(np.array([0.06, 0.01, 0.0]), kind)  # surely nothing
    assert background < class_confusion and confident < class_confusion
    assert confident < maybe_object and background < maybe_object
    assert min(confident, background) >= 0.0 and max(class_confusion, maybe_object) <= 1.0


def test_margin_is_one_for_a_tie_and_uses_the_whole_class_vector():
    assert region_uncertainty(np.array([0.4, 0.4, 0.2])) > region_uncertainty(
        np.array([0.4, 0.05, 0.05]))  # same top score, different runner-up
    assert region_uncertainty(np.array([0.5, 0.0, 0.0])) == pytest.approx(1.0)
    with pytest.raises(SelectionError, match="unknown uncertainty kind 'gini'"):
        region_uncertainty(np.array([0.5, 0.0, 0.0]), "gini")


# --------------------------------------------------------------------------- per image


def test_nothing_found_gets_the_median_not_the_top():
    scores = [image(det(0.5, 0.45, 0.0)), image(), image(det(0.9, 0.0, 0.0)),
              image(det(0.6, 0.3, 0.0))]
    values = image_uncertainties(scores)
    assert values[1] == pytest.approx(np.median(values[[0, 2, 3]]))
    assert values[1] < values.max()


def test_balanced_does_not_put_nothing_found_first_but_plain_uncertainty_does():
    feats = spread_features(3)
    scores = [image(feat=feats[0]), image(det(0.5, 0.45, 0.0), feat=feats[1]),
              image(det(0.95, 0.0, 0.0), feat=feats[2])]
    kwargs = dict(class_names=CLASSES, labelled_class_counts={}, seed=0)
    assert select(scores, 1, strategy="balanced", **kwargs) == [1]
    assert select(scores, 1, strategy="uncertainty", **kwargs) == [0]  # the old behaviour


def test_plain_uncertainty_orders_by_mean_shown_top_score():
    scores = [image(det(0.9, 0, 0)), image(det(0.3, 0, 0), det(0.1, 0, 0)),
              image(det(0.6, 0, 0), det(0.8, 0, 0)), image(det(0.2, 0, 0))]
    # image 3's only region is under region_conf 0.25: nothing shown, most uncertain
    order = select(scores, 4, strategy="uncertainty", class_names=CLASSES, seed=0)
    assert order == [3, 1, 2, 0]


# --------------------------------------------------------------------------- class quotas


def test_quota_water_fills_the_least_labelled_classes_first():
    assert quota_shortfall(np.zeros(3), 30) == pytest.approx([1, 1, 1])
    assert quota_shortfall(np.array([60.0, 30, 10]), 50) == pytest.approx([0, 1 / 3, 7 / 9])
    assert quota_shortfall(np.array([10.0, 10, 10]), 0) == pytest.approx([0, 0, 0])
    # the candidates hold about 1 triangle: the rest of its share spills over (level 69.5)
    capped = quota_shortfall(np.array([60.0, 30, 10]), 50, np.array([100.0, 100, 1]))
    assert capped == pytest.approx([9.5 / 69.5, 39.5 / 69.5, 1 / 11], abs=1e-6)


@pytest.mark.parametrize(("labelled", "first"), [
    ({"circle": 50, "square": 50, "triangle": 0}, 1),
    ({"circle": 0, "square": 50, "triangle": 50}, 0),
])
def test_quota_favours_the_under_represented_predicted_class(labelled, first):
    feats = spread_features(3)
    scores = [image(det(0.7, 0.0, 0.1), feat=feats[0]),  # a circle, as uncertain as ...
              image(det(0.1, 0.0, 0.7), feat=feats[1]),  # ... this triangle
              image(det(0.0, 0.7, 0.1), feat=feats[2])]  # and a square, never short
    picked = select(scores, 1, strategy="balanced", class_names=CLASSES,
                    labelled_class_counts=labelled, seed=0)
    assert picked == [first]


def test_quota_spreads_one_batch_over_classes():
    """Many confident-ish circles and a few squares: the batch takes the squares too."""
    feats = spread_features(12, seed=1)
    scores = [image(det(0.6, 0.05, 0.0), det(0.6, 0.05, 0.0), feat=feats[i]) for i in range(9)]
    scores += [image(det(0.05, 0.6, 0.0), feat=feats[i]) for i in range(9, 12)]
    picked = select(scores, 4, strategy="balanced", class_names=CLASSES,
                    labelled_class_counts={"circle": 40, "square": 2}, seed=0)
    assert set(picked[:3]) == {9, 10, 11}


# --------------------------------------------------------------------------- diversity


def test_k_center_skips_near_copies():
    rng = np.random.default_rng(0)
    far = spread_features(8, seed=2)
    base = np.array(far[0])
    copies = [tuple(base + rng.normal(0, 1e-3, base.shape)) for _ in range(5)]
    # five near-copies that are a bit more uncertain than three spread-out images
    scores = [image(det(0.5, 0.45, 0.0), feat=c) for c in copies]
    scores += [image(det(0.6, 0.3, 0.0), feat=far[i]) for i in (3, 5, 7)]
    picked = select(scores, 3, strategy="balanced", class_names=CLASSES, seed=0)
    assert picked[0] in range(5)
    assert set(picked[1:]) <= {5, 6, 7}, picked  # not a second copy


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fewer_candidates_than_asked_returns_all_once(strategy):
    feats = spread_features(3)
    scores = [image(det(0.5, 0.2, 0.1), feat=feats[0]), image(feat=feats[1]),
              image(det(0.9, 0.0, 0.3), feat=feats[2])]
    picked = select(scores, 10, strategy=strategy, class_names=CLASSES, seed=3)
    assert sorted(picked) == [0, 1, 2]


def test_random_is_seeded():
    scores = [image(feat=f) for f in spread_features(30)]
    one = select(scores, 10, strategy="random", class_names=CLASSES, seed=1)
    assert one == select(scores, 10, strategy="random", class_names=CLASSES, seed=1)
    assert one != select(scores, 10, strategy="random", class_names=CLASSES, seed=2)
    assert len(set(one)) == 10


@pytest.mark.parametrize(("scores", "count", "kwargs", "message"), [
    ([image()], 0, {}, "count must be a positive integer, got 0"),
    ([image()], -2, {}, "count must be a positive integer"),
    ([image()], True, {}, "count must be a positive integer"),
    ([], 5, {}, "no candidate images"),
    ([image()], 1, {"strategy": "coreset"}, "unknown strategy 'coreset'"),
    ([image()], 1, {"labelled_class_counts": {"dog": 3}}, r"unknown classes \['dog'\]"),
    ([image()], 1, {"labelled_class_counts": {"circle": -1}}, "must not be negative"),
    ([image(det(0.5, 0.5))], 1, {}, "candidate 0: a detection's class_probs is not 3"),
    ([image(), image(feat=(0.0, np.nan))], 1, {}, "candidate 1: features must be finite"),
    ([image(), image(feat=(0.0, 1.0, 2.0))], 1, {}, "candidate 1: features must be finite"),
    ([image()], 1, {"class_names": ()}, "class_names is empty"),
])
def test_bad_input_is_a_selection_error(scores, count, kwargs, message):
    args = {"strategy": "balanced", "class_names": CLASSES, **kwargs}
    with pytest.raises(SelectionError, match=message):
        select(scores, count, **args)
    assert issubclass(SelectionError, ValueError)


# --------------------------------------------------------------------------- real scorer


def test_scorer_matches_yolo_model_on_the_shapes_model(shapes_model):
    from labelpilot.backends.yolo import YoloModel
    from labelpilot.backends.yolo_scoring import YoloScorer
    from labelpilot.synthetic import make_image

    rng = random.Random(5)
    images = [make_image(rng, 160).image for _ in range(6)]
    scorer = YoloScorer(str(shapes_model), device="cpu")
    model = YoloModel(str(shapes_model), device="cpu")
    assert scorer.class_names == model.class_names == CLASSES
    scored = scorer.score(images, conf=0.25)
    predicted = model.predict(images, conf=0.25)
    assert sum(len(p.instances) for p in predicted) >= 6  # the model does find shapes
    for s, p in zip(scored, predicted, strict=True):
        assert len(s.detections) == len(p.instances)
        for d, inst in zip(s.detections, p.instances, strict=True):
            assert d.class_probs.shape == (3,) and d.class_probs.dtype == np.float32
            assert CLASSES[int(np.argmax(d.class_probs))] == inst.class_name
            assert float(d.class_probs.max()) == pytest.approx(inst.score, abs=1e-4)
            assert inst.box is not None
            got = (d.box.x1, d.box.y1, d.box.x2, d.box.y2)
            want = (inst.box.x1, inst.box.y1, inst.box.x2, inst.box.y2)
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1.0
    dims = {s.features.shape for s in scored}
    assert len(dims) == 1 and next(iter(dims))[0] > 0
    assert all(np.all(np.isfinite(s.features)) for s in scored)
    assert not np.allclose(scored[0].features, scored[1].features)  # per image, not constant
    low = scorer.score(images[:2], conf=0.05)  # a lower threshold keeps at least as many
    assert all(len(a.detections) >= len(b.detections) for a, b in zip(low, scored[:2],
                                                                       strict=True))
    assert select(scored, 2, strategy="balanced", class_names=scorer.class_names, seed=0)
    assert scorer.score([]) == []



def test_scorer_refuses_a_model_that_is_not_a_detector():
    from labelpilot.backends.yolo_scoring import YoloScorer

    with pytest.raises(ValueError, match="needs a detect model; 'yolo11n-cls.yaml' is a classify"):
        YoloScorer("yolo11n-cls.yaml", device="cpu")  # built from the yaml: no download
