"""`labelpilot frames`: sampling a video's frames (uniform, scene changes, model uncertainty) on
generated clips, and importing them into a real Label Studio and a CVAT stand-in over HTTP."""

from __future__ import annotations

import http.server
import itertools
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from labelpilot.backends.video import read_frames
from labelpilot.synthetic_video import SyntheticClip, make_clip, write_clip, write_vfr_clip
from labelpilot.trainers.frame_sampling import (
    FrameSamplingError,
    pick_frames,
    sample_frames,
    scene_changes,
    uncertainties,
)
from tests.fake_cvat import FakeCvat, FakeTask, serve

FPS = 12.0
SCENE = 40  # frames per scene of the cut clip


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory) -> Path:
    """Three generated scenes of 40 frames back to back: cuts before frames 41 and 81."""
    scenes = [make_clip(seed, frames=SCENE, fps=FPS) for seed in (3, 4, 5)]
    images = [c.render(n) for c in scenes for n in range(1, SCENE + 1)]
    path = tmp_path_factory.mktemp("cuts") / "three-scenes.mp4"
    return write_vfr_clip(images, [i / FPS for i in range(len(images))], path)


@pytest.fixture(scope="module")
def plain_clip(tmp_path_factory) -> Path:
    return write_clip(make_clip(21, frames=60, fps=FPS),
                      tmp_path_factory.mktemp("plain") / "street cam.mp4")


# --------------------------------------------------------------------------- sampling


def test_uniform_frames_are_evenly_spaced_and_are_the_decoded_pictures(plain_clip):
    data = plain_clip.read_bytes()
    frames = sample_frames(data, FPS, 6, "uniform")
    assert [f.number for f in frames] == [1, 11, 21, 31, 41, 51]
    assert [f.time for f in frames] == pytest.approx([0, 10 / 12, 20 / 12, 30 / 12, 40 / 12,
                                                      50 / 12])
    decoded = {f.number: f.image for f in read_frames(data, FPS)}
    assert all(np.array_equal(f.image, decoded[f.number]) for f in frames)
    # at another rate than the file's: LS's numbering at that rate, still even
    assert pick_frames(data, 24.0, 4, "uniform") == [1, 31, 61, 91]
    assert pick_frames(data, FPS, 100, "uniform") == list(range(1, 61))  # all of them


def test_scene_sampling_picks_the_cuts(cut_clip):
    data = cut_clip.read_bytes()
    assert pick_frames(data, FPS, 3, "scene") == [1, 41, 81]
    assert set(pick_frames(data, FPS, 2, "scene")) in ({1, 41}, {1, 81})
    # every 3rd frame a candidate: the cut falls between candidates 40 and 43
    assert pick_frames(data, FPS, 3, "scene", candidates_every=3) == [1, 43, 82]
    # more picks than cuts: the cuts, then the biggest in-scene changes, spaced apart
    five = pick_frames(data, FPS, 5, "scene")
    assert {1, 41, 81} <= set(five)
    assert min(b - a for a, b in itertools.pairwise(five)) >= 12  # 10 s / (2 × 5) at 12/s
    distances = scene_changes(read_frames(data, FPS), 120, lambda _u: None)
    cuts = distances[[40, 80]]
    inside = np.delete(distances, [0, 40, 80])
    print(f"\nscene: cut distances {np.round(cuts, 3)}, largest in-scene "
          f"{inside.max():.3f}, median in-scene {np.median(inside):.3f}")
    assert cuts.min() > 2 * inside.max()


def _visible(clip: SyntheticClip, number: int) -> list[float]:
    """The share of each object inside the frame and not behind the pillar."""
    shares = []
    for mover in clip.movers:
        x, y = mover.path[number - 1]
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + mover.side, clip.width), min(y + mover.side, clip.height)
        area = max(0, x2 - x1) * max(0, y2 - y1)
        p = clip.pillar
        if p is not None and area:
            area -= (max(0, min(x2, p.x2) - max(x1, p.x1))
                     * max(0, min(y2, p.y2) - max(y1, p.y1)))
        shares.append(area / mover.side**2)
    return shares


def test_uncertainty_sampling_prefers_half_hidden_objects(tmp_path, shapes_model):
    """Frames where an object is half behind the pillar or half out of the picture (25-75 %
    visible) against the rest, on five clips: the served shapes model is less certain on
    them, and its picks hold more of them than uniform picks or the base rate."""
    from labelpilot.backends.yolo_scoring import YoloScorer

    scorer = YoloScorer(str(shapes_model), device="cpu")
    hard_picks = uniform_hard = picks_total = 0
    hard_frames = frames_total = 0
    above = pairs = 0.0
    for seed in (11, 12, 13, 14, 15):
        clip = make_clip(seed, frames=96, objects=3, fps=FPS)
        data = write_clip(clip, tmp_path / f"clip{seed}.mp4").read_bytes()
        hard = np.array([any(0.25 <= v <= 0.75 for v in _visible(clip, n))
                         for n in range(1, clip.frames + 1)])
        values = uncertainties(read_frames(data, FPS), clip.frames, scorer, 0.05,
                               lambda _u: None)
        above += float(sum((a > b) + 0.5 * (a == b) for a in values[hard]
                           for b in values[~hard]))
        pairs += hard.sum() * (~hard).sum()
        picks = pick_frames(data, FPS, 6, "uncertainty", scorer=scorer)
        assert min(b - a for a, b in itertools.pairwise(picks)) >= 8  # 8 s / 12 at 12/s
        uniform = pick_frames(data, FPS, 6, "uniform")
        hard_picks += int(hard[[p - 1 for p in picks]].sum())
        uniform_hard += int(hard[[p - 1 for p in uniform]].sum())
        picks_total += len(picks)
        hard_frames += int(hard.sum())
        frames_total += clip.frames
    auc = above / pairs
    base = hard_frames / frames_total
    print(f"\nuncertainty: AUC hard vs clean {auc:.2f}; hard share of picks "
          f"{hard_picks}/{picks_total} = {hard_picks / picks_total:.2f}, of uniform picks "
          f"{uniform_hard}/{picks_total}, of all frames {base:.2f}")
    assert auc > 0.6
    assert hard_picks / picks_total > 1.5 * base
    assert hard_picks > uniform_hard
    again = pick_frames(data, FPS, 6, "uncertainty", scorer=scorer)
    assert again == picks  # deterministic


def test_bad_sampling_input_gets_a_clear_message(plain_clip):
    data = plain_clip.read_bytes()
    with pytest.raises(FrameSamplingError, match="unknown sampling method 'random'"):
        pick_frames(data, FPS, 3, "random")
    with pytest.raises(FrameSamplingError, match="count must be a positive integer"):
        pick_frames(data, FPS, 0, "uniform")
    with pytest.raises(FrameSamplingError, match="needs a model"):
        pick_frames(data, FPS, 3, "uncertainty")
    with pytest.raises(ValueError, match="image"):
        pick_frames(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), FPS, 3,
                    "scene")


# --------------------------------------------------------------------------- CVAT

LABELS = [{"id": 1, "name": "circle", "color": "#e6194b", "type": "rectangle", "attributes": []}]


class RecordingCvat(FakeCvat):
    """The stand-in, also keeping the bodies of the data uploads (the PNGs themselves)."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        base: Any = super().handler()
        bodies = self.bodies

        class Recording(base):
            def _upload(self, task: FakeTask, body: bytes) -> None:
                bodies.append(body)
                super()._upload(task, body)

        return Recording


def _png(data: bytes) -> np.ndarray:
    picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None, "not a PNG"
    return picture


def _pngs(bodies: list[bytes]) -> list[np.ndarray]:
    found = re.findall(rb"\x89PNG\r\n\x1a\n.*?IEND\xaeB`\x82", b"".join(bodies), re.S)
    return [_png(png) for png in found]


@pytest.mark.parametrize("project", [7, None], ids=["in-a-project", "own-labels"])
def test_frames_become_a_cvat_task_named_by_frame_and_time(cut_clip, project):
    """`labelpilot frames VIDEO --cvat-...`, as an admin runs it."""
    from tests.helpers import run_cvat_cli

    cvat = RecordingCvat()
    cvat.add_task(FakeTask(5, "existing", [], [], LABELS, []))
    target = ["--cvat-project", "7"] if project else ["--cvat-labels", "circle,square"]
    with serve(cvat) as url:
        done = run_cvat_cli(url, {}, "frames", str(cut_clip), "--method", "scene", "--count",
                            "3", "--framerate", str(FPS), *target)
    assert done.returncode == 0, done.stderr + done.stdout
    summary = done.stdout
    (spec,) = cvat.created
    assert spec["name"] == "three-scenes.mp4 · frames (labelpilot)"
    if project is None:
        assert [label["name"] for label in spec["labels"]] == ["circle", "square"]
        assert "project_id" not in spec
    else:
        assert spec["project_id"] == 7 and "labels" not in spec
    new = cvat.tasks[6]
    assert new.uploaded == ["f1_t0.000s.png", "f41_t3.333s.png", "f81_t6.667s.png"]
    (job,) = new.jobs
    assert (job["start_frame"], job["stop_frame"]) == (0, 2)
    decoded = {f.number: f.image for f in read_frames(cut_clip.read_bytes(), FPS)}
    pictures = _pngs(cvat.bodies)
    assert len(pictures) == 3
    assert all(np.array_equal(p, decoded[n]) for p, n in zip(pictures, (1, 41, 81),
                                                             strict=True))
    assert f"in CVAT: new task 6 'three-scenes.mp4 · frames (labelpilot)', job {job['id']}" \
        in summary, summary


# --------------------------------------------------------------------------- Label Studio

IMAGE_CONFIG = """<View>
  <Image name="picture" value="$img"/>
  <RectangleLabels name="label" toName="picture">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </RectangleLabels>
</View>"""
VIDEO_CONFIG = """<View>
  <Video name="video" value="$video" frameRate="12"/>
  <Labels name="labels" toName="video"><Label value="circle"/></Labels>
  <VideoRectangle name="box" toName="video"/>
</View>"""


@pytest.mark.e2e
@pytest.mark.slow
def test_frames_become_label_studio_image_tasks(monkeypatch, label_studio, ls_admin, redis_url,
                                                shapes_model, tmp_path, cut_clip, plain_clip):
    from labelpilot.adapters.label_studio.frames import FramesImportError
    from labelpilot.frames_command import run_frames
    from labelpilot.settings import load_settings

    monkeypatch.setenv("LABEL_STUDIO_URL", ls_admin.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LABELPILOT_MODEL_DETECT", str(shapes_model))
    settings = load_settings()
    project = ls_admin.create_project("frames of a video", IMAGE_CONFIG)
    summary = run_frames(settings, str(cut_clip), method="scene", count=3, framerate=FPS,
                         ls_project=project)
    tasks = sorted(ls_admin.tasks(project), key=lambda t: t["data"]["frame"])
    assert [t["data"]["frame"] for t in tasks] == [1, 41, 81]
    assert [t["data"]["timestamp"] for t in tasks] == [0.0, 3.333, 6.667]
    assert {t["data"]["source_video"] for t in tasks} == {str(cut_clip.resolve())}
    decoded = {f.number: f.image for f in read_frames(cut_clip.read_bytes(), FPS)}
    for task in tasks:
        url = task["data"]["img"]
        assert url.startswith("/data/upload/") and url.endswith(
            f"f{task['data']['frame']}_t{task['data']['timestamp']:.3f}s.png")
        got = requests.get(ls_admin.url + url, headers=ls_admin.headers(), timeout=30)
        assert np.array_equal(_png(got.content), decoded[task["data"]["frame"]])
    assert f"tasks {sorted(t['id'] for t in tasks)}" in summary, summary
    # LS keeps the extra fields: Data Manager columns to filter and sort by
    columns = {c.get("id") for c in ls_admin.get("/api/dm/columns", {"project": project})[
        "columns"]}
    assert {"img", "source_video", "timestamp", "frame"} <= columns

    # uncertainty, with the project's served detector (the default: the shapes model), at
    # the file's own rate (12/s)
    summary = run_frames(settings, str(plain_clip), method="uncertainty", count=2,
                         ls_project=project)
    assert "frames at 12/s: 2 frames picked (uncertainty, model " in summary, summary
    added = [t for t in ls_admin.tasks(project) if t["data"]["source_video"] != tasks[0]["data"][
        "source_video"]]
    assert len(added) == 2
    for task in added:
        assert task["data"]["timestamp"] == round((task["data"]["frame"] - 1) / FPS, 3)
        assert task["data"]["img"].endswith("s.png")

    video_project = ls_admin.create_project("a video project", VIDEO_CONFIG)
    with pytest.raises(FramesImportError, match="no <Image> tag"):
        run_frames(settings, str(cut_clip), method="uniform", count=2, ls_project=video_project)
    assert ls_admin.tasks(video_project) == []
