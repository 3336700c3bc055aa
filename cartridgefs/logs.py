"""Logging set-up shared by every entry point: `CARTRIDGE_LOG=info|debug|warning|error`."""

from __future__ import annotations

import logging
import os


def setup_logging(default: str = "warning") -> None:
    level = os.environ.get("CARTRIDGE_LOG", default).strip().lower()
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
