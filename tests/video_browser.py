"""Open a video task in the real Label Studio UI (headless Chromium) and report what the
annotator sees at one frame: the Regions panel, the tracks in LS's store and the boxes Konva
draws over the video; `tests/browser/video_boxes.mjs` does the driving."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

VIDEO_SCRIPT = Path(__file__).parent / "browser" / "video_boxes.mjs"


def open_video_task(label_studio_url: str, email: str, password: str, project: int, task: int,
                    frame: int, screenshot: Path) -> dict[str, Any]:
    """The script's report: {ok, steps, frame, regions, labels, boxes, tracks, annotation,
    painted, error?}. `boxes` empty and `painted` 0 mean nothing is drawn at `frame`; each
    of `tracks` says whether its region is in its lifespan there. Fails the test when the
    script itself crashes (an `ok: false` report is returned for the caller to assert on)."""
    from tests.test_sam_e2e import browser_tools  # heavy module: imported only when used

    node, chromium, modules = browser_tools()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="video-browser-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({
            "playwright": str(modules), "chromium": chromium, "url": label_studio_url,
            "email": email, "password": password, "project": project, "task": task,
            "frame": frame, "screenshot": str(screenshot)}))
        done = subprocess.run([node, str(VIDEO_SCRIPT), str(config)], capture_output=True,
                              text=True, timeout=300)
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(f"{VIDEO_SCRIPT.name} exited {done.returncode}:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report
