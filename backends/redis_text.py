"""Redis replies as text, whatever the client's `decode_responses`."""

from __future__ import annotations


def as_text(value: bytes | str) -> str:
    """A Redis reply as str (clients without decode_responses give bytes)."""
    return value.decode() if isinstance(value, bytes) else value
