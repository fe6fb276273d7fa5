"""structlog setup shared by the CLI, the worker and the API."""

from __future__ import annotations

import logging

import structlog

from core.controls import escape_controls
from core.webhooks import SECRET_PATTERN, SECRET_PREFIX


def _redact(logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
    """No webhook signing secret reaches a log line in clear, whatever logged it."""
    for k, v in event.items():
        if isinstance(v, str) and SECRET_PREFIX in v:
            event[k] = SECRET_PATTERN.sub("[REDACTED]", v)
    return event


def _escape(logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
    """No control character a model or an endpoint wrote (an error's ESC, BEL, NUL) reaches the
    terminal a log is read on raw: each is written ``\\uXXXX`` (newlines kept)."""
    for k, v in event.items():
        if isinstance(v, str):
            event[k] = escape_controls(v, keep="\n\t")
    return event


class _EscapingFormatter(logging.Formatter):
    """The same for the standard library's log lines (the Temporal SDK's, an activity's failure)."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record), keep="\n\t")


def configure(level: str = "info", json: bool = False) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, format="%(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_EscapingFormatter("%(message)s"))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            _redact,
            structlog.processors.format_exc_info,
            _escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        cache_logger_on_first_use=True,
    )
