"""CVAT's "direct" invoke mode: one port per function, the same on every worker and host.

CVAT then POSTs to ``http://host.docker.internal:<status.httpPort>/`` with no function name,
so the port alone says which function is meant. Ports come from LABELPILOT_CVAT_DIRECT_PORTS
(which `labelpilot serve` binds) and are handed out once per function name, atomically, in a
Redis hash; a function keeps its port for as long as that hash lives and the port stays in the
configured range (``redis-cli del labelpilot:cvat:direct-ports`` hands them out afresh).
"""

from __future__ import annotations

import logging

import redis

from labelpilot.backends.redis_text import as_text

log = logging.getLogger(__name__)
_KEY = "labelpilot:cvat:direct-ports"
_ASSIGN = """
local low, high = tonumber(ARGV[2]), tonumber(ARGV[3])
local p = redis.call('HGET', KEYS[1], ARGV[1])
if p and tonumber(p) >= low and tonumber(p) <= high then return p end
local used = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do used[v] = true end
for port = low, high do
  if not used[tostring(port)] then
    redis.call('HSET', KEYS[1], ARGV[1], tostring(port))
    return tostring(port)
  end
end
return false
"""
_warned: set[str] = set()  # names already reported as portless by this process


def port_for(connection: redis.Redis, name: str, span: tuple[int, int]) -> int | None:
    """The function's port in `span` (the direct-mode range); None when the range is full."""
    try:
        port = connection.eval(_ASSIGN, 1, _KEY, name, span[0], span[1])
    except redis.RedisError as exc:
        log.warning("no direct-mode port for %s: %s", name, exc)
        return None
    if not port:
        if name in _warned:
            return None
        _warned.add(name)
        log.warning("LABELPILOT_CVAT_DIRECT_PORTS %s-%s is full: '%s' has no port (widen the "
                    "range or use CVAT_NUCLIO_INVOKE_METHOD=dashboard)", span[0], span[1], name)
        return None
    return int(as_text(port))


def function_on_port(connection: redis.Redis, port: int) -> str | None:
    for name, value in connection.hgetall(_KEY).items():
        if as_text(value) == str(port):
            return as_text(name)
    return None
