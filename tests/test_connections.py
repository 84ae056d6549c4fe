"""What /setup tells one worker reaches the others, and a token never follows a new host."""

from __future__ import annotations

import redis

from labelpilot.adapters.label_studio.connections import (
    Connections,
    ProjectConnection,
    SourcePolicy,
    token_ttl,
)


def test_a_setup_naming_another_host_does_not_inherit_the_token(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    one, other = Connections(client, SourcePolicy()), Connections(client, SourcePolicy())
    one.remember(41, ProjectConnection("http://ls.example:8080", "secret-token", "<View/>"))
    assert other.get(41).access_token == "secret-token"  # through Redis, with its lifetime
    assert 0 < token_ttl(client, 41) <= 3600
    one.remember(41, ProjectConnection("http://evil.example", None, None))  # no token of its own
    assert one.get(41).access_token is None
    assert token_ttl(client, 41) == -2  # gone from Redis too
    fresh = Connections(client, SourcePolicy())
    assert fresh.get(41) == ProjectConnection("http://evil.example", None, "<View/>")
    assert fresh.image_source(41).ls_url == "http://evil.example"
    assert "Authorization" not in (fresh.image_source(41).api.headers())


def test_a_rotated_token_reaches_a_worker_that_knew_the_old_one(redis_url: str,
                                                                monkeypatch) -> None:
    from labelpilot.adapters.label_studio import connections

    client = redis.Redis.from_url(redis_url)
    one, other = Connections(client, SourcePolicy()), Connections(client, SourcePolicy())
    one.remember(42, ProjectConnection("http://ls.example:8080", "old-token", "<View/>"))
    assert other.get(42).access_token == "old-token"
    one.remember(42, ProjectConnection("http://ls.example:8080", "new-token", None))
    monkeypatch.setattr(connections, "_RECHECK_S", 0.0)  # as after a few seconds
    assert other.get(42).access_token == "new-token"
