"""structlog, configured once for every service: JSON in production, readable in development.

Personal data is kept out by construction: the envelope's `log_context()` holds ids only, and a
last processor drops any key that names a personal field, should a caller pass one by mistake.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

PERSONAL_KEYS = frozenset(
    {"reporter", "name", "phone", "id_number", "contact_note", "contact", "email", "address_detail"}
)


def _drop_personal(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in PERSONAL_KEYS & event_dict.keys():
        event_dict[key] = "[redacted]"
    return event_dict


_configured = False


def configure_logging(service: str, *, json_logs: bool | None = None, level: str | None = None) -> None:
    global _configured
    if json_logs is None:
        json_logs = os.environ.get("GRIDLOOP_ENV", "production") != "development"
    level_name = (level or os.environ.get("GRIDLOOP_LOG_LEVEL", "INFO")).upper()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _drop_personal,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    _configured = True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
