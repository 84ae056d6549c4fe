"""Admin-side Label Studio calls (demo, `connect label-studio`, tests) via label-studio-sdk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests


class LabelStudioAdmin:
    def __init__(self, url: str, api_key: str):
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.api_key = api_key
        self.client = LabelStudio(base_url=self.url, api_key=api_key)
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Token {api_key}"

    def create_project(self, title: str, label_config: str) -> int:
        return int(self.client.projects.create(title=title, label_config=label_config).id)

    def upload_images(self, project: int, paths: list[Path]) -> list[int]:
        """Upload files (tasks get `/data/upload/...` URLs); returns the new task ids."""
        # LS reads request.FILES as a dict: each file needs its own field name.
        files = [(f"file{i}", (p.name, p.read_bytes())) for i, p in enumerate(paths)]
        response = self._http.post(f"{self.url}/api/projects/{project}/import",
                                   params={"return_task_ids": "true"}, files=files, timeout=60)
        response.raise_for_status()
        return [int(t) for t in response.json().get("task_ids", [])]

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        response = self._http.post(f"{self.url}/api/projects/{project}/import",
                                   params={"return_task_ids": "true"}, json=tasks, timeout=60)
        response.raise_for_status()
        return [int(t) for t in response.json().get("task_ids", [])]

    def add_local_storage(self, project: int, path: Path, regex: str = r".*\.(png|jpe?g)") -> int:
        storage = self.client.import_storage.local.create(
            project=project, path=str(path), title=path.name, regex_filter=regex,
            use_blob_urls=True)
        self.client.import_storage.local.sync(id=storage.id)
        return int(storage.id)

    def connect_backend(self, project: int, backend_url: str, *, interactive: bool = False,
                        title: str = "labelpilot") -> int:
        backend = self.client.ml.create(project=project, url=backend_url, title=title,
                                        is_interactive=interactive)
        return int(backend.id)  # type: ignore[union-attr]

    def retrieve_predictions(self, project: int) -> dict[str, Any]:
        response = self._http.post(f"{self.url}/api/dm/actions",
                                   params={"id": "retrieve_tasks_predictions",
                                           "project": project},
                                   json={"selectedItems": {"all": True, "excluded": []}},
                                   timeout=600)
        response.raise_for_status()
        return dict(response.json())

    def predictions(self, project: int) -> list[dict[str, Any]]:
        response = self._http.get(f"{self.url}/api/predictions", params={"project": project},
                                  timeout=60)
        response.raise_for_status()
        return list(response.json())

    def tasks(self, project: int) -> list[dict[str, Any]]:
        response = self._http.get(f"{self.url}/api/tasks",
                                  params={"project": project, "page_size": 1000,
                                          "fields": "all"}, timeout=60)
        response.raise_for_status()
        body = response.json()
        return list(body["tasks"] if isinstance(body, dict) else body)
