"""The one client for Label Studio's API: token handling, JSON calls with retries, admin calls.

Either token kind works everywhere (JSON calls, label-studio-sdk calls, image downloads through
`ImageSource`): a legacy key is sent as ``Token``, a personal access token is exchanged for
short-lived access JWTs by `TokenAuth`.

Retries (urllib3 `Retry` in requests' adapter, exponential backoff): a connection that could not
be opened is retried for every method, since Label Studio never saw the request; 429/502/503/504
answers and broken reads only for idempotent methods. A POST Label Studio may have applied
(a project, a backend, an import) is never sent twice.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from labelpilot.adapters.label_studio.auth import TokenAuth

if TYPE_CHECKING:
    import httpx
    from label_studio_sdk import LabelStudio

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# label-studio-sdk wants an api_key; the real header comes from TokenAuth (`_sdk_auth`). A non-JWT
# value keeps the SDK off its own refresh, which would refresh a second time and fails outright
# with an access JWT.
_SDK_KEY_PLACEHOLDER = "labelpilot-token-auth"


class LabelStudioApiError(RuntimeError):
    """Label Studio could not be reached or answered with an error status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def retry_policy(retries: int, backoff: float) -> Retry:
    """Connect failures: every method; 429/502/503/504 and read errors: idempotent methods."""
    return Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                 backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
                 allowed_methods=IDEMPOTENT_METHODS, raise_on_status=False)


def _id(created: Any) -> int:
    """The id of an object label-studio-sdk returned (its models type every field optional)."""
    return int(created.id)


class LabelStudioClient:
    """One Label Studio server and token: JSON API calls, admin operations, the SDK client."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry_policy(retries, backoff), pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        token = (token or "").strip()
        self.auth = TokenAuth(self.url, token, session=self.session) if token else None

    def headers(self) -> dict[str, str]:
        """The Authorization header for this server (empty without a token)."""
        return self.auth.header() if self.auth is not None else {}

    # -- JSON API ---------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, files: Any = None,
                timeout: float | None = None) -> requests.Response:
        """The raw response of `method path` (path like /api/projects/3), whatever its status."""
        if not path.startswith("/"):
            raise ValueError(f"a Label Studio API path starts with '/': {path!r}")
        url = self.url + path
        try:
            return self.session.request(method, url, params=params, json=json, files=files,
                                        headers=self.headers(), timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise LabelStudioApiError(f"could not reach Label Studio at {url}: {exc}") from exc

    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             json: Any = None, files: Any = None, timeout: float | None = None) -> Any:
        """The decoded JSON answer (None when empty), or LabelStudioApiError for a non-2xx."""
        response = self.request(method, path, params=params, json=json, files=files,
                                timeout=timeout)
        if not 200 <= response.status_code < 300:
            raise LabelStudioApiError(f"Label Studio answered {response.status_code} for "
                                      f"{method} {path}: {response.text[:200]}",
                                      response.status_code)
        return response.json() if response.content else None

    def get(self, path: str, params: Mapping[str, Any] | None = None, *,
            timeout: float | None = None) -> Any:
        return self.call("GET", path, params=params, timeout=timeout)

    def post(self, path: str, json: Any = None, *, params: Mapping[str, Any] | None = None,
             files: Any = None, timeout: float | None = None) -> Any:
        return self.call("POST", path, params=params, json=json, files=files, timeout=timeout)

    def patch(self, path: str, json: Any = None, *, timeout: float | None = None) -> Any:
        return self.call("PATCH", path, json=json, timeout=timeout)

    def put(self, path: str, json: Any = None, *, timeout: float | None = None) -> Any:
        return self.call("PUT", path, json=json, timeout=timeout)

    def delete(self, path: str, *, timeout: float | None = None) -> Any:
        return self.call("DELETE", path, timeout=timeout)

    # -- label-studio-sdk -------------------------------------------------------------------

    @functools.cached_property
    def sdk(self) -> LabelStudio:
        """label-studio-sdk's client with this client's header; it never retries by itself
        (it would repeat POSTs), its transport retries only connections that failed to open."""
        import httpx  # with the SDK only: the backend's image path does not need it
        from label_studio_sdk import LabelStudio

        http = httpx.Client(auth=self._sdk_auth, timeout=self.timeout,
                            transport=httpx.HTTPTransport(retries=self.retries))
        return LabelStudio(base_url=self.url, api_key=_SDK_KEY_PLACEHOLDER, httpx_client=http,
                           max_retries=0)

    def _sdk_auth(self, request: httpx.Request) -> httpx.Request:
        """The SDK's requests get this client's header instead of the SDK's own."""
        request.headers.pop("Authorization", None)
        request.headers.update(self.headers())
        return request

    def _sdk_get_options(self) -> dict[str, Any]:
        return {"max_retries": self.retries}  # SDK GETs may be retried like ours

    # -- projects and tasks -----------------------------------------------------------------

    def project(self, project: int) -> dict[str, Any]:
        return dict(self.get(f"/api/projects/{project}", timeout=300))

    def export_tasks(self, project: int) -> list[dict[str, Any]]:
        """Every task with its annotations (JSON export, not only the labeled ones)."""
        return list(self.get(f"/api/projects/{project}/export",
                             {"exportType": "JSON", "download_all_tasks": "false"}, timeout=300))

    def find_project(self, title: str) -> int | None:
        found: Any
        for found in self.sdk.projects.list(request_options=self._sdk_get_options()):
            if found.title == title:
                return _id(found)
        return None

    def create_project(self, title: str, label_config: str) -> int:
        return _id(self.sdk.projects.create(title=title, label_config=label_config))

    def upload_images(self, project: int, paths: list[Path]) -> list[int]:
        """Upload files (tasks get `/data/upload/...` URLs); returns the new task ids."""
        # LS reads request.FILES as a dict: each file needs its own field name.
        files = [(f"file{i}", (p.name, p.read_bytes())) for i, p in enumerate(paths)]
        body = self.post(f"/api/projects/{project}/import", params={"return_task_ids": "true"},
                         files=files)
        return [int(t) for t in body.get("task_ids", [])]

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        body = self.post(f"/api/projects/{project}/import", tasks,
                         params={"return_task_ids": "true"})
        return [int(t) for t in body.get("task_ids", [])]

    def add_local_storage(self, project: int, path: Path, regex: str = r".*\.(png|jpe?g)") -> int:
        """A Local Files storage for `path` (under LS's document root), synced once."""
        storage = self.sdk.import_storage.local.create(
            project=project, path=str(path), title=path.name, regex_filter=regex,
            use_blob_urls=True)
        storage_id = _id(storage)
        self.sdk.import_storage.local.sync(id=storage_id)
        return storage_id

    def connect_backend(self, project: int, backend_url: str, *, interactive: bool = False,
                        title: str = "labelpilot") -> int:
        backend = self.sdk.ml.create(project=project, url=backend_url, title=title,
                                     is_interactive=interactive)
        return _id(backend)

    def retrieve_predictions(self, project: int) -> dict[str, Any]:
        """Data Manager's "Retrieve predictions" on every task (synchronous without Redis)."""
        return dict(self.post("/api/dm/actions",
                              {"selectedItems": {"all": True, "excluded": []}},
                              params={"id": "retrieve_tasks_predictions", "project": project},
                              timeout=600))

    def predictions(self, project: int) -> list[dict[str, Any]]:
        return list(self.get("/api/predictions", {"project": project}))

    def tasks(self, project: int) -> list[dict[str, Any]]:
        body = self.get("/api/tasks", {"project": project, "page_size": 1000, "fields": "all"})
        return list(body["tasks"] if isinstance(body, dict) else body)

    def iter_tasks(self, project: int, *, page_size: int = 200,
                   view: int | None = None) -> Iterator[dict[str, Any]]:
        """Every task of a project (or of a Data Manager `view`, in its order), page by page."""
        params: dict[str, Any] = {"project": project, "page_size": page_size, "fields": "all"}
        if view is not None:
            params["view"] = view
        page, seen = 1, 0
        while True:
            response = self.request("GET", "/api/tasks", params={**params, "page": page})
            if response.status_code == 404 and page > 1:  # past the last page
                return
            if not 200 <= response.status_code < 300:
                raise LabelStudioApiError(f"Label Studio answered {response.status_code} for "
                                          f"GET /api/tasks: {response.text[:200]}",
                                          response.status_code)
            body = response.json()
            tasks = list(body["tasks"] if isinstance(body, dict) else body)
            total = int(body.get("total", 0)) if isinstance(body, dict) else len(tasks)
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= total or not isinstance(body, dict):
                return
            page += 1

    def update_task_data(self, task: int, data: Mapping[str, Any]) -> None:
        """Replace a task's data (LS keeps its annotations and predictions)."""
        self.patch(f"/api/tasks/{task}", {"data": dict(data)})

    def save_view(self, project: int, title: str, data: Mapping[str, Any]) -> int:
        """A Data Manager tab of the project titled `title`, created or updated to `data`
        (filters, ordering, columns); returns its id."""
        for view in self.get("/api/dm/views", {"project": project}) or []:
            if (view.get("data") or {}).get("title") == title:
                self.patch(f"/api/dm/views/{view['id']}",
                           {"project": project, "data": {**dict(data), "title": title}})
                return int(view["id"])
        created = self.post("/api/dm/views",
                            {"project": project, "data": {**dict(data), "title": title}})
        return int(created["id"])

    def task_predictions(self, task: int) -> list[dict[str, Any]]:
        """The predictions LS holds for one task."""
        return list(self.get("/api/predictions", {"task": task}) or [])

    def create_prediction(self, task: int, result: list[dict[str, Any]], score: float,
                          model_version: str) -> int:
        """Store a prediction on a task (as "Retrieve predictions" would); returns its id."""
        created = self.post("/api/predictions", {"task": task, "result": result,
                                                 "score": score, "model_version": model_version})
        return int(created["id"])
