"""The KPI dashboard (`/dashboard`): per project, model versions and their audit trail,
acceptance rate, predictions per day, jobs, drift, retraining requests and image quality."""

from __future__ import annotations

import redis
from flask import Blueprint

from labelpilot.adapters.http_auth import BasicAuth
from labelpilot.backends.model_store import ModelStore


def dashboard(
    store: ModelStore, connection: redis.Redis, admin_token: str | None, auth: BasicAuth | None
) -> Blueprint:
    """The blueprint over the real ledgers (built on the first dashboard request):
    `admin_token` (LABELPILOT_ADMIN_TOKEN) as basic-auth password gives the admin view, `auth`
    (BASIC_AUTH_USER/PASS) the read-only one."""
    from labelpilot.adapters.dashboard.blueprint import DashboardAuth, dashboard_blueprint
    from labelpilot.adapters.dashboard.data import Sources

    return dashboard_blueprint(
        lambda: Sources.build(store, connection), DashboardAuth(admin_token, auth)
    )
