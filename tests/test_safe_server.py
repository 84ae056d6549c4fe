"""Safe by default, against the real server (`labelpilot serve`'s gunicorn, real Redis) with
basic auth and an admin token on: malformed requests get a 4xx JSON answer and the server keeps
serving; admin credentials work alongside basic auth; the LS token from /setup lives in Redis
only as long as something needs it, and never reaches job arguments or logs."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from rq import Queue, SimpleWorker
from rq.job import Job

from labelpilot.embedded_redis import free_port
from labelpilot.label_config import load
from labelpilot.trainers.queue import JOB_TIMEOUT, QUEUE_NAME
from tests.conftest import BackendServer, start_backend

pytestmark = pytest.mark.slow
AUTH = ("ls", "secret")
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
TOKEN_TTL = 120  # LABELPILOT_LS_TOKEN_TTL of this server
CONFIG = load("detection_shapes")


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url, shapes_model) -> Iterator[BackendServer]:
    tmp = tmp_path_factory.mktemp("safe")
    backend = start_backend(tmp, {
        "REDIS_URL": redis_url, "LABELPILOT_MODEL_DETECT": str(shapes_model),
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
        "LABELPILOT_ADMIN_TOKEN": ADMIN_TOKEN, "LABELPILOT_LS_TOKEN_TTL": str(TOKEN_TTL),
        "LABELPILOT_CVAT_PORT": str(free_port()), "LABELPILOT_PRELOAD": ""},
        workers=1, auth=AUTH)
    yield backend
    backend.stop()


def raw_request(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library tidies them) and read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def assert_json_4xx(response: requests.Response, status: int = 400) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    return str(response.json()["error"])


def test_malformed_requests_get_a_4xx_json_answer_and_the_server_keeps_serving(server):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deep = "[" * 100_000 + "]" * 100_000
    for method, path, headers in (("POST", "/predict", {}), ("POST", "/setup", {}),
                                  ("POST", "/webhook", {}), ("GET", "/versions", {}),
                                  ("POST", "/admin/models/ls-1-label/promote", admin),
                                  ("PUT", "/admin/projects/ls-1/settings", admin)):
        response = requests.request(method, f"{server.url}{path}", data=deep, timeout=30,
                                    auth=None if headers else AUTH,
                                    headers={"Content-Type": "application/json", **headers})
        if path == "/versions":  # an optional body: unusable is as good as none
            assert response.status_code == 200 and response.json() == {"versions": []}
            continue
        assert "not valid JSON" in assert_json_4xx(response), path
    promote = f"{server.url}/admin/models/ls-1-label/promote"
    for body in ({"version": 5}, {"version": ["v1"]}, {"version": "v" * 2**20},
                 {"version": "../../../etc"}, {"version": "v1/../v2"}, {}, [1]):
        error = assert_json_4xx(requests.post(promote, json=body, headers=admin, timeout=30))
        assert "version" in error
    for key in ("%2E%2E", "a" * 5000, "..hidden"):
        error = assert_json_4xx(requests.post(f"{server.url}/admin/models/{key}/promote",
                                              json={"version": "v1"}, headers=admin, timeout=30))
        assert "model key" in error
    missing = requests.post(promote, json={"version": "v7"}, headers=admin, timeout=30)
    assert_json_4xx(missing, 404)
    settings = f"{server.url}/admin/projects/ls-1/settings"
    for body in ([1], "text", {"epochs": 1e308 * 10}, {"epochs": {"a": 1}}):
        data = json.dumps(body).replace("Infinity", "1e999")
        assert_json_4xx(requests.put(settings, data=data, headers={
            **admin, "Content-Type": "application/json"}, timeout=30))
    versions = requests.get(f"{server.url}/versions", json=[1, 2], auth=AUTH, timeout=30)
    assert versions.status_code == 200 and versions.json() == {"versions": []}
    # credentials a str comparison cannot take (non-ASCII) are wrong credentials, not a crash
    odd = base64.b64encode("ü:ß".encode()).decode()
    assert_json_4xx(requests.get(f"{server.url}/health", headers={
        "Authorization": f"Basic {odd}"}, timeout=30), 401)
    assert_json_4xx(requests.get(f"{server.url}/admin/models", headers={
        "X-Labelpilot-Admin-Token": "ü"}, timeout=30), 401)
    # a chunked body whose chunk size is not hex: the HTTP layer refuses it, in JSON too
    for chunks in (b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}\r\nzz\r\nab\r\n0\r\n\r\n"):
        creds = base64.b64encode(":".join(AUTH).encode())
        status, headers, body = raw_request(server.url, (
            b"POST /predict HTTP/1.1\r\nHost: backend\r\nAuthorization: Basic " + creds +
            b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks))
        assert status == 400 and headers["content-type"] == "application/json", body
        assert "not valid HTTP" in json.loads(body)["error"]
    assert requests.get(f"{server.url}/health", auth=AUTH, timeout=10).status_code == 200
    log = server.log.read_text()
    assert "Traceback" not in log and "RecursionError" not in log and '" 500' not in log


def test_admin_token_works_alongside_basic_auth(server):
    models = f"{server.url}/admin/models"
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert requests.get(models, headers=bearer, timeout=10).status_code == 200
    header = {"X-Labelpilot-Admin-Token": ADMIN_TOKEN}
    assert requests.get(models, headers=header, timeout=10).status_code == 200
    # a proxy (or client) whose Authorization carries the basic auth passes the token aside
    both = requests.get(models, headers=header, auth=AUTH, timeout=10)
    assert both.status_code == 200 and "models" in both.json()
    for headers, auth in (({}, None), ({}, AUTH), ({"Authorization": "Bearer wrong"}, None),
                          ({"X-Labelpilot-Admin-Token": "wrong"}, AUTH)):
        error = assert_json_4xx(requests.get(models, headers=headers, auth=auth, timeout=10),
                                401)
        assert "X-Labelpilot-Admin-Token" in error
    # /jobs and /metrics stay behind the basic auth, like /predict; the admin token is not it
    for path in ("/jobs", "/metrics"):
        assert requests.get(f"{server.url}{path}", auth=AUTH, timeout=10).status_code == 200
        for headers in ({}, bearer):
            denied = requests.get(f"{server.url}{path}", headers=headers, timeout=10)
            assert "basic auth" in assert_json_4xx(denied, 401)


def redis_values(connection: redis.Redis) -> dict[str, bytes]:
    """Every value in the database, by key, as bytes (to look for a secret in)."""
    out = {}
    for key in connection.scan_iter(count=1000):
        kind = connection.type(key).decode()
        if kind == "string":
            value = connection.get(key) or b""
        elif kind == "hash":
            value = repr(connection.hgetall(key)).encode()
        elif kind == "list":
            value = repr(connection.lrange(key, 0, -1)).encode()
        elif kind in ("set", "zset"):
            value = repr(connection.zrange(key, 0, -1) if kind == "zset"
                         else connection.smembers(key)).encode()
        elif kind == "stream":
            value = repr(connection.xrange(key)).encode()
        else:
            value = b""
        out[key.decode()] = value
    return out


def test_the_ls_token_lives_only_while_something_needs_it(server, redis_url, tmp_path,
                                                           monkeypatch, capfd, caplog):
    connection = redis.Redis.from_url(redis_url)
    token = "lstoken" + uuid.uuid4().hex
    project = 600000 + uuid.uuid4().int % 1000
    token_key = f"labelpilot:ls:token:{project}"
    dead_ls = f"http://127.0.0.1:{free_port()}"  # nothing listens: the training fails fast
    setup = {"project": f"{project}.1700000000", "schema": CONFIG, "hostname": dead_ls,
             "access_token": token, "extra_params": None}
    assert requests.post(f"{server.url}/setup", json=setup, auth=AUTH,
                         timeout=30).status_code == 200
    assert 0 < connection.ttl(token_key) <= TOKEN_TTL
    assert [k for k, v in redis_values(connection).items() if token.encode() in v] == [token_key]
    # a predict on the worker reads it (the point of keeping it); no token in the request
    assert requests.post(f"{server.url}/predict", auth=AUTH, timeout=30, json={
        "tasks": [{"id": 1, "data": {"image": f"{dead_ls}/data/upload/1/a.png"}}],
        "project": setup["project"], "label_config": CONFIG}).status_code == 200
    # a queued training keeps the token until it ends; the job carries only the project id
    queued = requests.post(f"{server.url}/webhook", auth=AUTH, timeout=30, json={
        "action": "START_TRAINING", "project": {"id": project, "token": "invite"}})
    assert queued.status_code == 201, queued.text
    assert connection.ttl(token_key) > JOB_TIMEOUT
    job = Job.fetch(queued.json()["job"], connection=connection)
    assert job.kwargs["project_id"] == project
    assert token not in repr((job.args, job.kwargs, job.meta, job.description))
    assert [k for k, v in redis_values(connection).items() if token.encode() in v] == [token_key]
    # LS's next /setup (it sends one before every batch) does not cut the hold short
    requests.post(f"{server.url}/setup", json=setup, auth=AUTH, timeout=30)
    assert connection.ttl(token_key) > JOB_TIMEOUT
    # the job runs (and fails: no Label Studio there); when it ends the hold ends
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LABELPILOT_LS_TOKEN_TTL", str(TOKEN_TTL))
    queue = Queue(QUEUE_NAME, connection=connection)
    for other in queue.get_job_ids():  # only this test's job runs here
        if other != job.id:
            queue.remove(other)
    SimpleWorker([queue], connection=connection).work(burst=True)
    assert job.get_status(refresh=True) in ("failed", "finished")
    assert 0 < connection.ttl(token_key) <= TOKEN_TTL
    # nowhere in the logs: the server's, the job's
    out, err = capfd.readouterr()
    assert token not in out + err + caplog.text
    assert token not in server.log.read_text()
    assert token not in Path(server.log).read_bytes().decode("utf-8", "replace")


def test_a_token_kept_by_an_older_version_moves_to_the_short_lived_key(redis_url,
                                                                       monkeypatch):
    """Entries written before (token inside, for 30 days) heal on first read; a training that
    finds no token says how to get one."""
    from labelpilot.adapters.label_studio.connections import Connections, SourcePolicy
    from labelpilot.jobs import train_label_studio

    connection = redis.Redis.from_url(redis_url)
    project = 610000 + uuid.uuid4().int % 1000
    token = "oldtoken" + uuid.uuid4().hex
    connection.set(f"labelpilot:ls:project:{project}", json.dumps({
        "hostname": "http://ls:8080", "access_token": token, "label_config": CONFIG}),
        ex=30 * 86400)
    conn = Connections(connection, SourcePolicy(token_seconds=TOKEN_TTL)).get(project)
    assert conn.access_token == token and conn.hostname == "http://ls:8080"
    assert token not in repr(conn)
    assert token.encode() not in connection.get(f"labelpilot:ls:project:{project}")
    assert 0 < connection.ttl(f"labelpilot:ls:token:{project}") <= TOKEN_TTL
    connection.delete(f"labelpilot:ls:token:{project}")
    monkeypatch.setenv("REDIS_URL", redis_url)
    for name in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"no Label Studio token .*LABEL_STUDIO_API_KEY"):
        train_label_studio(project, {"event": "test"})
