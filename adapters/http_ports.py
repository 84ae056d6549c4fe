"""Which blueprint answers on which port.

`labelpilot serve` binds one app on several ports: the main one (Label Studio, admin) and
CVAT's (the facade's own port, the direct-mode range). CVAT's facade has no auth of its own
(nuclio has none, CVAT sends none), so it must not answer where Label Studio's endpoints do,
and Label Studio's endpoints have no business on CVAT's network. The port a request came in on
is the listening socket's (`SERVER_PORT`: a2wsgi takes it from the ASGI scope's ``server``).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request

from labelpilot.adapters.http_errors import ApiError


def server_port(request: Request) -> int | None:
    """The local port the request came in on (None: unknown, e.g. a unix socket)."""
    try:
        return int(request.environ.get("SERVER_PORT") or 0) or None
    except ValueError:
        return None


@dataclass(frozen=True)
class PortRouting:
    """`cvat_blueprint` answers on `cvat_ports` (LABELPILOT_CVAT_PORT and the direct-mode
    range), and on every other port too only when `shared` (LABELPILOT_CVAT_PORT=0); the other
    blueprints never answer on `cvat_ports`. A refused request gets a 404 saying where to go."""

    cvat_blueprint: str
    cvat_ports: frozenset[int]
    shared: bool
    main_port: int

    def check(self, request: Request) -> None:
        if request.blueprint is None:  # no route matched: Flask's own 404
            return
        on_cvat_port = server_port(request) in self.cvat_ports
        if request.blueprint == self.cvat_blueprint:
            if not on_cvat_port and not self.shared:
                raise ApiError(404, "the CVAT facade is not served on this port: use "
                                    "LABELPILOT_CVAT_PORT (CVAT_NUCLIO_PORT), or set "
                                    "LABELPILOT_CVAT_PORT=0 to serve it here behind the basic "
                                    "auth")
        elif on_cvat_port:
            raise ApiError(404, "this port serves only the CVAT facade; the Label Studio and "
                                f"admin endpoints are on port {self.main_port}")
