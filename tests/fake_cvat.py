"""A stand-in for CVAT 2.x's REST API over real HTTP, for what cvat-sdk's client calls when
labelpilot reads a task, opens issues and creates a task from images: JSON shaped like CVAT's
(paginated lists with count/next/results, data meta, LabeledData annotations, the data upload
protocol with Upload-Start / Upload-Multiple / Upload-Finish, /api/requests polling)."""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

PAGE_SIZE = 2  # small pages, so that paging is exercised


@dataclass
class FakeTask:
    id: int
    name: str
    frames: list[bytes]  # encoded images, by frame index
    frame_names: list[str]
    labels: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    annotations: dict[str, Any] = field(default_factory=lambda: {
        "version": 0, "tags": [], "shapes": [], "tracks": []})
    project_id: int | None = None
    uploaded: list[str] = field(default_factory=list)  # file names, in the task's frame order


class FakeCvat:
    def __init__(self) -> None:
        self.tasks: dict[int, FakeTask] = {}
        self.issues: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []  # bodies of POST /api/tasks
        self.requests: list[tuple[str, str]] = []
        self._uploads: dict[int, list[str]] = {}

    def add_task(self, task: FakeTask) -> None:
        self.tasks[task.id] = task

    def jobs(self) -> list[dict[str, Any]]:
        return [j for t in self.tasks.values() for j in t.jobs]

    # ------------------------------------------------------------------------------ server

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        cvat = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: Any, content_type: str = "application/json"
                      ) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _page(self, items: list[Any], query: dict[str, list[str]]) -> None:
                page = int(query.get("page", ["1"])[0])
                chunk = items[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
                more = page * PAGE_SIZE < len(items)
                self._send(200, {"count": len(items), "results": chunk, "previous": None,
                                 "next": f"http://cvat/?page={page + 1}" if more else None})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                cvat.requests.append(("GET", self.path))
                path = url.path.rstrip("/")
                known = re.fullmatch(r"/api/tasks/(\d+)(/.*)?", path)
                if known and int(known[1]) not in cvat.tasks:
                    self._send(404, {"detail": "Not found."})
                elif path == "/api/server/about":
                    self._send(200, {"name": "Computer Vision Annotation Tool",
                                     "version": "2.80.0", "description": "", "logo_url": "",
                                     "subtitle": ""})
                elif path == "/api/jobs":
                    task = int(query["task_id"][0])
                    self._page([{"issues": {"count": 0, "url": "http://cvat/api/issues"},
                                 "labels": {"url": f"http://cvat/api/labels?job_id={j['id']}"},
                                 "url": f"http://cvat/api/jobs/{j['id']}", **j}
                                for j in cvat.jobs() if j["task_id"] == task], query)
                elif path == "/api/issues":
                    job = int(query["job_id"][0])
                    self._page([i for i in cvat.issues if i["job"] == job], query)
                elif path == "/api/labels":
                    self._page(cvat.tasks[int(query["task_id"][0])].labels, query)
                elif m := re.fullmatch(r"/api/tasks/(\d+)", path):
                    task = cvat.tasks[int(m[1])]
                    self._send(200, {"id": task.id, "name": task.name,
                                     "project_id": task.project_id, "size": len(task.frames),
                                     "mode": "annotation", "status": "annotation",
                                     "organization": None, "owner": None, "assignee": None,
                                     "url": f"http://cvat/api/tasks/{task.id}",
                                     "bug_tracker": "", "dimension": "2d", "subset": "",
                                     "segment_size": len(task.frames), "overlap": 0,
                                     "image_quality": 70, "data": task.id,
                                     "created_date": "2026-11-29T07:00:00Z",
                                     "updated_date": "2026-11-29T07:00:00Z",
                                     "jobs": {"count": len(task.jobs), "completed": sum(
                                         j.get("state") == "completed" for j in task.jobs),
                                              "validation": 0},
                                     "labels": {"url": f"/api/labels?task_id={task.id}"}})
                elif m := re.fullmatch(r"/api/tasks/(\d+)/data/meta", path):
                    task = cvat.tasks[int(m[1])]
                    self._send(200, {"chunk_size": 36, "size": len(task.frames),
                                     "chunks_updated_date": "2026-11-29T07:00:00Z",
                                     "image_quality": 70, "start_frame": 0,
                                     "stop_frame": len(task.frames) - 1, "frame_filter": "",
                                     "deleted_frames": [], "included_frames": None,
                                     "frames": [{"width": 160, "height": 160, "name": n,
                                                 "related_files": 0,
                                                 "has_related_context": False}
                                                for n in task.frame_names]})
                elif m := re.fullmatch(r"/api/tasks/(\d+)/annotations", path):
                    self._send(200, cvat.tasks[int(m[1])].annotations)
                elif m := re.fullmatch(r"/api/tasks/(\d+)/data", path):
                    task = cvat.tasks[int(m[1])]
                    assert query["type"] == ["frame"], query
                    self._send(200, task.frames[int(query["number"][0])], "image/png")
                elif m := re.fullmatch(r"/api/requests/(.+)", path):
                    self._send(200, {"id": m[1], "status": "finished", "message": "",
                                     "operation": {"type": "create:task", "target": "task"},
                                     "created_date": "2026-11-29T07:00:00Z"})
                else:
                    self._send(404, {"detail": "Not found."})

            def do_POST(self) -> None:
                url = urlparse(self.path)
                path = url.path.rstrip("/")
                body = self._body()
                cvat.requests.append(("POST", self.path))
                if path == "/api/issues":
                    issue = {"id": len(cvat.issues) + 1, "resolved": False, **json.loads(body)}
                    cvat.issues.append(issue)
                    self._send(201, issue)
                elif path == "/api/tasks":
                    spec = json.loads(body)
                    cvat.created.append(spec)
                    new_id = max(cvat.tasks, default=0) + 1
                    cvat.add_task(FakeTask(new_id, spec["name"], [], [], spec.get("labels") or [],
                                           [], project_id=spec.get("project_id")))
                    self._send(201, {"id": new_id, "name": spec["name"],
                                     "project_id": spec.get("project_id"),
                                     "jobs": {"count": 0}, "labels": {"url": ""}})
                elif m := re.fullmatch(r"/api/tasks/(\d+)/data", path):
                    self._upload(cvat.tasks[int(m[1])], body)
                else:
                    self._send(404, {"detail": "Not found."})

            def do_PATCH(self) -> None:
                self._annotations("PATCH")

            def do_PUT(self) -> None:
                self._annotations("PUT")

            def _annotations(self, method: str) -> None:
                """Task annotations: PATCH ?action=create adds, PUT replaces."""
                url = urlparse(self.path)
                body = json.loads(self._body() or b"{}")
                cvat.requests.append((method, self.path))
                m = re.fullmatch(r"/api/tasks/(\d+)/annotations", url.path.rstrip("/"))
                if not m or int(m[1]) not in cvat.tasks:
                    self._send(404, {"detail": "Not found."})
                    return
                task = cvat.tasks[int(m[1])]
                if method == "PUT":
                    task.annotations = {"version": task.annotations["version"] + 1,
                                        "tags": [], "shapes": [], "tracks": []}
                elif parse_qs(url.query).get("action") != ["create"]:
                    self._send(400, {"detail": "action must be create, update or delete"})
                    return
                for kind in ("tags", "shapes", "tracks"):
                    task.annotations[kind].extend(body.get(kind) or [])
                self._send(200, task.annotations)

            def _upload(self, task: FakeTask, body: bytes) -> None:
                if "Upload-Start" in self.headers:
                    cvat._uploads[task.id] = []
                    self._send(202, b"", "text/plain")
                elif "Upload-Multiple" in self.headers:
                    names = re.findall(rb'filename="([^"]+)"', body)
                    cvat._uploads[task.id].extend(n.decode().rsplit("/", 1)[-1] for n in names)
                    self._send(200, b"", "text/plain")
                elif "Upload-Finish" in self.headers:
                    fields = json.loads(body)
                    order = fields.get("upload_file_order") or sorted(cvat._uploads[task.id])
                    assert sorted(order) == sorted(cvat._uploads[task.id]), (order, body)
                    task.uploaded = list(order)
                    task.frame_names = list(order)
                    job_id = 100 + task.id
                    task.jobs = [{"id": job_id, "task_id": task.id, "start_frame": 0,
                                  "stop_frame": len(order) - 1, "type": "annotation",
                                  "state": "new"}]
                    self._send(202, {"rq_id": f"create:task-{task.id}"})
                else:
                    self._send(400, {"detail": "unexpected upload request"})

            def log_message(self, *args: object) -> None:
                pass

        return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionResetError):  # a client's keep-alive
            super().handle_error(request, client_address)


@contextmanager
def serve(cvat: FakeCvat) -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), cvat.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
