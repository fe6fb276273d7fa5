"""structlog setup shared by the CLI, the worker and the API."""

from __future__ import annotations

import logging

import structlog

from core.webhooks import SECRET_PATTERN, SECRET_PREFIX


def _redact(logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
    """No webhook signing secret reaches a log line in clear, whatever logged it."""
    for k, v in event.items():
        if isinstance(v, str) and SECRET_PREFIX in v:
            event[k] = SECRET_PATTERN.sub("[REDACTED]", v)
    return event


def configure(level: str = "info", json: bool = False) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, format="%(message)s")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        cache_logger_on_first_use=True,
    )
