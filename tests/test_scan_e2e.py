"""`labelpilot scan` against a real Label Studio 1.23.2: a project holding good, dark, blurry,
duplicate, corrupt, 0-byte, huge and non-image files (and a task whose image is gone). The
scan, queued for a worker, reports its progress and finishes; every task gets its findings as
data fields the Data Manager shows; the tab lists the flagged ones; a second scan (`--wait`)
gives the same answers and the same counts."""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import pytest
import redis

from bench.quality import good_images, variants
from labelpilot.adapters.label_studio.scan import (
    QUALITY_FIELD,
    QUALITY_ISSUES_FIELD,
    QUALITY_VIEW,
)
from labelpilot.backends.quality_ledger import QualityLedger
from labelpilot.label_config import load
from tests.conftest import ARTIFACTS
from tests.helpers import huge_png, run_cli, serve_directory

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
MAX_PIXELS = 4_000_000


def write_files(directory: Path) -> tuple[list[Path], dict[str, bytes]]:
    """Images LS stores (uploaded) and the broken files served from elsewhere (by URL)."""
    directory.mkdir(parents=True)
    good = good_images(("astronaut", "coffee", "rocket", "chelsea"))
    uploads = {
        "good_astronaut.jpg": good["astronaut"],
        "good_coffee.jpg": good["coffee"],
        "dark_rocket.jpg": variants(good["rocket"])["dark"],
        "blurry_cat.jpg": cv2.GaussianBlur(good["chelsea"], (0, 0), 3),
        "copy_astronaut.png": good["astronaut"],
    }
    paths = []
    for name, image in uploads.items():
        path = directory / name
        cv2.imwrite(str(path), image)
        paths.append(path)
    whole = (directory / "good_astronaut.jpg").read_bytes()
    served = {
        "corrupt.jpg": whole[: len(whole) // 3],
        "empty.png": b"",
        "huge.png": huge_png(3000, 3000),
        "notes.jpg": b"shopping list: milk, eggs\n",
    }
    return paths, served


def test_scan_marks_every_task_and_reports_each_bad_file(
    ls_admin, label_studio, redis_url, tmp_path
):
    from tests.helpers import wait_for
    from tests.test_retraining_e2e import start_worker

    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(tmp_path / "models"),
        "LABELPILOT_ALLOWED_HOSTS": "127.0.0.1",
        "LABELPILOT_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
    }
    pid = ls_admin.create_project("quality scan e2e", load("detection_shapes"))
    QualityLedger(redis.Redis.from_url(redis_url)).forget(f"ls-{pid}")
    uploads, served = write_files(tmp_path / "files")
    ls_admin.upload_images(pid, uploads)
    (tmp_path / "served").mkdir()
    for name, data in served.items():
        (tmp_path / "served" / name).write_bytes(data)
    with serve_directory(tmp_path / "served") as base:
        ls_admin.import_tasks(pid, [{"image": f"{base}/{name}"} for name in [*served, "gone.jpg"]])
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            queued = run_cli("scan", "--ls-project", str(pid), env=env)
            assert queued.returncode == 0 and "enqueued: job" in queued.stdout, queued.stderr
            seen: list[str] = []

            def finished() -> bool:
                out = run_cli("jobs", "--key", f"scan-ls-{pid}", env=env).stdout
                seen.append(out)
                assert "failed" not in out, (out, (tmp_path / "worker.log").read_text()[-3000:])
                return "finished" in out

            wait_for("the scan job", finished, 300, 0.5)
        finally:
            worker.terminate()
            worker.wait(30)
        assert "with quality findings" in seen[-1], seen[-1]

        tasks = {t["id"]: t["data"] for t in ls_admin.iter_tasks(pid)}
        assert len(tasks) == 10 and all(QUALITY_FIELD in d for d in tasks.values()), tasks
        by_file = {os.path.basename(str(d["image"])).split("-", 1)[-1]: d for d in tasks.values()}
        expect = {
            "good_astronaut.jpg": "ok",
            "good_coffee.jpg": "ok",
            "dark_rocket.jpg": "dark",
            "blurry_cat.jpg": "blurry",
            "copy_astronaut.png": "duplicate of",
            "corrupt.jpg": "corrupt: the image is corrupt or truncated",
            "empty.png": "corrupt: the image is empty (0 bytes)",
            "huge.png": "odd_size: the image is 3000x3000",
            "notes.jpg": "corrupt: the data is not an image",
            "gone.jpg": "not checked:",
        }
        for name, words in expect.items():
            data = by_file[name]
            assert data[QUALITY_FIELD].startswith(words), (name, data)
            issues = 0 if words in ("ok", "not checked:") else 1
            assert data[QUALITY_ISSUES_FIELD] == issues, (name, data)
        assert "LABELPILOT_MAX_IMAGE_PIXELS" in by_file["huge.png"][QUALITY_FIELD]
        dup_of = int(
            re.search(r"duplicate of (\d+)", by_file["copy_astronaut.png"][QUALITY_FIELD])[1]
        )
        assert tasks[dup_of]["image"].endswith("good_astronaut.jpg")

        views = ls_admin.get("/api/dm/views", {"project": pid})
        (view,) = [v for v in views if v["data"]["title"] == QUALITY_VIEW]
        listed = {t["id"] for t in ls_admin.iter_tasks(pid, view=view["id"])}
        assert listed == {t for t, d in tasks.items() if d[QUALITY_ISSUES_FIELD] >= 1}
        assert len(listed) == 7

        counts = QualityLedger(redis.Redis.from_url(redis_url)).counts(f"ls-{pid}")
        assert counts["checked"] == 9 and counts["corrupt"] == 3 and counts["odd_size"] == 1
        assert counts["dark"] == 1 and counts["blurry"] == 1 and counts["duplicate"] == 1

        again = run_cli("scan", "--ls-project", str(pid), "--wait", env=env)
        assert again.returncode == 0, again.stderr
        ARTIFACTS.mkdir(exist_ok=True)  # what the docs quote
        (ARTIFACTS / "scan_e2e.txt").write_text(
            f"$ labelpilot scan --ls-project {pid}\n{queued.stdout}\n$ labelpilot jobs --key "
            f"scan-ls-{pid}\n{seen[-1]}\n$ labelpilot scan --ls-project {pid} --wait\n"
            f"{again.stdout}\ntask data:\n"
            + "\n".join(f"{t}: {d}" for t, d in sorted(tasks.items()))
        )
        assert "scanned 10 images" in again.stdout and "7 with findings" in again.stdout
        assert "not checked: item" in again.stdout and "gone.jpg" in again.stdout
        assert QualityLedger(redis.Redis.from_url(redis_url)).counts(f"ls-{pid}") == counts
        assert {t["id"]: t["data"] for t in ls_admin.iter_tasks(pid)} == tasks


def test_scan_refuses_bad_input_with_a_clear_message(ls_admin, label_studio, redis_url):
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "REDIS_URL": redis_url,
    }
    text = ls_admin.create_project(
        "scan no images",
        """<View>
  <Text name="text" value="$text"/>
  <Choices name="c" toName="text"><Choice value="a"/></Choices></View>""",
    )
    out = run_cli("scan", "--ls-project", str(text), "--wait", env=env)
    assert out.returncode == 2 and "has no <Image" in out.stderr, out.stderr
    out = run_cli("scan", env=env)
    assert out.returncode == 2 and "--ls-project or --cvat-task" in out.stderr
    out = run_cli("scan", "--ls-project", "99999", "--wait", env=env)
    assert out.returncode == 2 and "cannot scan" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
