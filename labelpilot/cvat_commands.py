"""What the `labelpilot` CLI does for CVAT (kept here so labelpilot/cli.py stays thin)."""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from labelpilot.adapters.cvat import config
from labelpilot.adapters.cvat.client import CvatAccess
from labelpilot.settings import Settings, SettingsError

WEBHOOK_EVENTS = ("update:job", "update:task")


def serving_ports(settings: Settings) -> list[str]:
    """Extra binds (``host:port``) gunicorn makes for CVAT: the facade's port (unless it shares
    PORT) and the direct-mode range, on LABELPILOT_CVAT_HOST. SettingsError when the range is
    malformed."""
    ports = [] if settings.cvat_port_shared else [settings.cvat_port]
    try:
        span = config.parse_port_range(settings.cvat_direct_ports)
    except config.ConfigError as exc:
        raise SettingsError(f"invalid configuration: {exc}") from None
    if span is not None:
        ports.extend(range(span[0], span[1] + 1))
    host = settings.cvat_host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
    return [f"{host}:{port}" for port in ports]


def train_cvat_command(task: int | None, project: int | None, task_type: str | None,
                       wait: bool, trigger: dict[str, Any], *, train_now: Callable[..., Any],
                       request: Callable[..., Any]) -> str:
    """Train here (`wait`: `train_now(kind, ident, trigger, task_type=...)`, the job itself) or
    queue the job (`request(kind, ident, trigger, task_type=...)` → `queue.Enqueued`)."""
    if (task is None) == (project is None):
        raise ValueError("give exactly one of --cvat-task and --cvat-project")
    kind, ident = ("task", task) if task is not None else ("project", project)
    assert ident is not None
    options = {"task_type": task_type} if task_type else {}
    if wait:
        from labelpilot.adapters.cvat.client import CvatConfigError

        try:
            result = train_now(kind, ident, trigger, **options)
        except CvatConfigError as exc:
            raise SystemExit(f"error: {exc}") from exc
        return f"{result['model_version']}: {result['decision']['reason']}"
    queued = request(kind, ident, trigger, **options)
    return f"{queued.outcome}: job {queued.job_id} (see: labelpilot jobs --key cvat-{kind}-{ident})"


def _webhook_body(target: str, project: int | None, secret: str) -> dict[str, Any]:
    body: dict[str, Any] = {"target_url": target, "description": "labelpilot: retrain",
                            "type": "project" if project else "organization",
                            "events": list(WEBHOOK_EVENTS), "content_type": "application/json",
                            "secret": secret, "is_active": True, "enable_ssl": True}
    if project:
        body["project_id"] = project
    return body


def register_webhook(client: Any, body: dict[str, Any]) -> int:
    """Create the webhook through CVAT's API; returns its id."""
    from cvat_sdk import models

    request = models.WebhookWriteRequest(**body)
    created, _ = client.api_client.webhooks_api.create(webhook_write_request=request)
    return int(created.id)


def connect_cvat_command(backend_url: str, access: CvatAccess, project: int | None,
                         organization: str | None, secret: str | None) -> str:
    parts = urlsplit(backend_url if "://" in backend_url else f"http://{backend_url}")
    host, port = parts.hostname or "labelpilot", parts.port or (443 if parts.scheme == "https"
                                                                 else 80)
    env = {"CVAT_NUCLIO_SCHEME": parts.scheme or "http", "CVAT_NUCLIO_HOST": host,
           "CVAT_NUCLIO_PORT": str(port), "CVAT_NUCLIO_INVOKE_METHOD": "dashboard",
           "CVAT_NUCLIO_DEFAULT_TIMEOUT": "120"}
    lines = ["# 1. CVAT's AI Tools: set on BOTH cvat_server and cvat_worker_annotation "
             "(docker-compose.override.yml), then `docker compose up -d`:", "services:"]
    for service in ("cvat_server", "cvat_worker_annotation"):
        lines += [f"  {service}:", "    environment:"]
        lines += [f"      {k}: '{v}'" for k, v in env.items()]
    lines += ["# (CVAT containers must reach that host; on Docker Desktop/Linux with "
              "host-gateway use host.docker.internal)", ""]
    target = f"{backend_url.rstrip('/')}/cvat/webhook"
    if not secret:
        secret = secrets.token_hex(16)
        lines.append(f"# 2. webhook secret (new): set LABELPILOT_CVAT_WEBHOOK_SECRET={secret} "
                     "for labelpilot serve")
    else:
        lines.append("# 2. webhook secret: LABELPILOT_CVAT_WEBHOOK_SECRET (already set)")
    if not project and not organization:
        lines.append("# 3. training webhook: pass --project ID (or --organization SLUG) to "
                     "get its registration")
        return "\n".join(lines)
    body = _webhook_body(target, project, secret)
    if access.url and access.has_credentials:
        from labelpilot.adapters.cvat.client import cvat_client

        client = cvat_client(access)
        if organization:
            client.organization_slug = organization
        webhook_id = register_webhook(client, body)
        lines.append(f"# 3. registered CVAT webhook {webhook_id} -> {target} "
                     f"({', '.join(WEBHOOK_EVENTS)})")
        return "\n".join(lines)
    org = f"?org={organization}" if organization and not project else ""
    lines += ["# 3. register the training webhook (or rerun with CVAT_URL and CVAT_ACCESS_TOKEN "
              "or CVAT_USER/CVAT_PASSWORD set):",
              f"curl -X POST \"${{CVAT_URL:-{access.url or 'http://localhost:8080'}}}"
              f"/api/webhooks{org}\" -H \"Authorization: Bearer $CVAT_ACCESS_TOKEN\" "
              f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"]
    return "\n".join(lines)
