"""One readable log format for every labelpilot process."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s [%(process)d] "
                        "%(name)s: %(message)s", datefmt="%H:%M:%S")
