"""`labelpilot frames VIDEO`: the frames of a video worth labelling, as image tasks.

The video (a local file or an http(s) URL) is sampled (`trainers.frame_sampling`: uniform,
scene changes, or where the served detector is least certain) and the picked frames go into a
Label Studio project (tasks with `image`, `source_video`, `timestamp`, `frame`) or a new CVAT
task (`<video> · frames (labelpilot)`, frames named `f<frame>_t<seconds>s.png`). Frame numbers
follow Label Studio's rule at the rate used: frame n is the picture at (n - 1) / rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from labelpilot.adapters.cvat.frames import create_frames_task, task_name
from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.adapters.label_studio.frames import import_frames
from labelpilot.backends.video import VideoInfo, probe_video
from labelpilot.runtime import control_defaults, model_locator, model_store, yolo_max_batch
from labelpilot.settings import Settings, secret
from labelpilot.trainers.frame_sampling import FrameScorer, frames_at, pick_frames

Progress = Callable[[dict[str, Any]], None]


class FramesError(ValueError):
    """The command cannot run as asked; the message says what to change."""


def run_frames(settings: Settings, video: str, *, method: str, count: int,
               ls_project: int | None = None, cvat_project: int | None = None,
               cvat_labels: Sequence[str] = (), cvat_task_name: str | None = None,
               framerate: float | None = None, candidates_every: int = 1,
               min_spacing: float | None = None,
               progress: Progress | None = None) -> str:
    """Sample `video` and import the frames into `ls_project`, or into a new CVAT task (in
    `cvat_project`, or with `cvat_labels`); returns the summary to print."""
    report = progress or (lambda _update: None)
    to_cvat = cvat_project is not None or bool(cvat_labels)
    if (ls_project is None) == (not to_cvat):
        raise FramesError("give either --ls-project, or --cvat-project / --cvat-labels (one "
                          "platform)")
    data, source = read_video(video, settings)
    info = probe_video(data, max_seconds=settings.max_video_seconds,
                       max_pixels=settings.max_image_pixels)
    rate = framerate or info.fps
    if not rate:
        raise FramesError("the video does not say its frame rate: give --framerate")
    ls = _ls_client(settings) if ls_project is not None else None
    cvat = _cvat(settings) if to_cvat else None
    scorer, version = None, ""
    if method == "uncertainty":
        scorer, version = _scorer(settings, ls, ls_project, cvat_project)
    numbers = pick_frames(data, rate, count, method, scorer=scorer,
                          max_seconds=settings.max_video_seconds,
                          max_pixels=settings.max_image_pixels,
                          candidates_every=candidates_every, min_spacing=min_spacing,
                          progress=report)
    frames = frames_at(data, rate, numbers, max_seconds=settings.max_video_seconds,
                       max_pixels=settings.max_image_pixels)
    head = _describe(video, info, rate, method, numbers, version)
    if ls is not None and ls_project is not None:
        ids = import_frames(ls, ls_project, frames, source, progress=report)
        return (f"{head}\n  in Label Studio: project {ls_project}, tasks {ids} "
                "(data: image, source_video, timestamp, frame)")
    name = cvat_task_name or task_name(video_name(video))
    task, job, names = create_frames_task(cvat, frames, name, project_id=cvat_project,
                                          labels=cvat_labels)
    return (f"{head}\n  in CVAT: new task {task} '{name}', job {job}, frames "
            f"{names[0]} .. {names[-1]}")


def read_video(video: str, settings: Settings) -> tuple[bytes, str]:
    """(the bytes, what tasks record as `source_video`: the URL, or the file's absolute path)."""
    limit = settings.max_video_bytes
    if urlparse(video).scheme in ("http", "https"):
        return _download(video, limit, settings.video_download_seconds), video
    path = Path(video).expanduser()
    if not path.is_file():
        raise FramesError(f"no video file at {video} (give a path or an http(s) URL)")
    size = path.stat().st_size
    if size > limit:
        raise FramesError(f"{video} is {size} bytes, over the limit of {limit} "
                          "(LABELPILOT_MAX_VIDEO_BYTES)")
    return path.read_bytes(), str(path.resolve())


def video_name(video: str) -> str:
    """The file name of a path or URL (what the CVAT task is named after)."""
    name = Path(urlparse(video).path if "://" in video else video).name
    return name or video


def _download(url: str, limit: int, seconds: float) -> bytes:
    try:
        with requests.get(url, stream=True, timeout=seconds) as response:
            if response.status_code != 200:
                raise FramesError(f"{url} answered {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_content(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise FramesError(f"{url} is over the limit of {limit} bytes "
                                      "(LABELPILOT_MAX_VIDEO_BYTES)")
                chunks.append(chunk)
    except requests.RequestException as exc:
        raise FramesError(f"could not download {url}: {exc}") from exc
    return b"".join(chunks)


def _ls_client(settings: Settings) -> LabelStudioClient:
    url, token = settings.label_studio_url, secret(settings.label_studio_api_key)
    if not url or not token:
        raise FramesError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to import into Label "
                          "Studio")
    return LabelStudioClient(url, token)


def _cvat(settings: Settings) -> Any:
    from labelpilot.adapters.cvat.client import cvat_client
    from labelpilot.runtime import cvat_access

    return cvat_client(cvat_access(settings))


def _scorer(settings: Settings, ls: LabelStudioClient | None, ls_project: int | None,
            cvat_project: int | None) -> tuple[FrameScorer, str]:
    """The detector the target serves now (its trained version, else the default)."""
    from labelpilot.adapters.cvat.frames import frames_model as cvat_model
    from labelpilot.adapters.label_studio.frames import frames_model as ls_model
    from labelpilot.backends.yolo_scoring import YoloScorer
    from labelpilot.redis_conn import connect

    store = model_store(settings, connect(settings))
    locator = model_locator(settings)
    defaults = control_defaults(settings)
    if ls is not None and ls_project is not None:
        weights, version = ls_model(ls, ls_project, store, locator, defaults)
    else:
        weights, version = cvat_model(store, locator, cvat_project, defaults.model("detect"))
    return YoloScorer(weights, device=settings.device,
                      max_batch=yolo_max_batch(settings)), version


def _describe(video: str, info: VideoInfo, rate: float, method: str, numbers: list[int],
              version: str) -> str:
    model = f", model {version}" if version else ""
    times = ", ".join(f"{(n - 1) / rate:.2f}" for n in numbers[:12])
    more = " ..." if len(numbers) > 12 else ""
    return (f"{video}: {info.width}x{info.height}, {info.duration:.1f} s, frames at {rate:g}/s: "
            f"{len(numbers)} frames picked ({method}{model})\n"
            f"  frames {numbers[:12]}{more}\n  at seconds {times}{more}")

