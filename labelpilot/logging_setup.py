"""One readable log format for every labelpilot process."""

from __future__ import annotations

import logging


def setup_logging(level: str = "INFO") -> None:
    """`level`: the settings' LOG_LEVEL."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s [%(process)d] "
                        "%(name)s: %(message)s", datefmt="%H:%M:%S")
