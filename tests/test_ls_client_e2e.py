"""The one Label Studio client with a real personal access token from a real Label Studio 1.23.2."""

from __future__ import annotations

import pytest
import requests

from labelpilot.adapters.label_studio.client import LabelStudioClient
from labelpilot.adapters.label_studio.image_source import ImageSource
from labelpilot.label_config import load
from tests.helpers import generate_images

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_personal_access_token_works_for_admin_calls_and_image_downloads(
        label_studio, personal_access_token, tmp_path):
    # the header the old admin helper hard-coded: LS refuses a PAT sent as a legacy token
    refused = requests.get(f"{label_studio.url}/api/projects", timeout=10,
                           headers={"Authorization": f"Token {personal_access_token}"})
    assert refused.status_code == 401

    client = LabelStudioClient(label_studio.url, personal_access_token)
    assert client.auth is not None and client.auth.kind == "refresh"
    pid = client.create_project("personal access token", load("detection_shapes"))  # SDK
    assert client.find_project("personal access token") == pid  # SDK, GET
    assert client.project(pid)["title"] == "personal access token"  # JSON API
    uploaded = generate_images(tmp_path / "upload", 1, seed=11)
    upload_ids = client.upload_images(pid, [uploaded[0].path])  # multipart POST
    storage_dir = label_studio.files_root / f"pat-{pid}"
    synced = generate_images(storage_dir, 1, seed=12)
    client.add_local_storage(pid, storage_dir)  # SDK create + sync
    tasks = {t["id"]: t["data"]["image"] for t in client.tasks(pid)}
    assert len(tasks) == 2 and upload_ids[0] in tasks
    assert client.headers()["Authorization"].startswith("Bearer ")

    source = ImageSource(client)
    upload_url = tasks[upload_ids[0]]
    assert upload_url.startswith("/data/upload/")
    assert source.fetch(upload_url) == uploaded[0].path.read_bytes()
    synced_url = next(url for task_id, url in tasks.items() if task_id != upload_ids[0])
    assert synced_url.startswith(f"{label_studio.url}/data/local-files/?d=")
    assert source.fetch(synced_url) == synced[0].path.read_bytes()
