"""How a value goes into the audit log: rendered as JSON, cut to a length (a ``Cut``, which
``db.capture`` turns into a reference to the row that stores it whole), and redacted of secrets
(configured values, secret-named parameters, anything shaped like a webhook signing secret)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from psycopg.types.json import Json, Jsonb

from core.eventformat import value_digest
from core.webhooks import SECRET_PATTERN, SECRET_PREFIX

MAX_VALUE_CHARS = 200  # a statement's parameter
ROW_VALUE_CHARS = 80  # a field of a written row
EVENT_VALUE_CHARS = 4000  # a value in an event's data
# Parameter names whose values are secrets: api_key, key_hash, access_token... (not max_tokens).
SECRET_NAME = re.compile(r"(api_?key|key_hash|password|passwd|secret|(^|_)token$|authorization)", re.I)


def shorten(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """A summary of a text for reading (events that also name the row holding it whole)."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… (+{len(value) - limit} chars)"


class Cut:
    """A value too long to inline: its length, digest and first characters, and where it lives."""

    __slots__ = ("value", "length", "digest", "head", "home", "before")

    def __init__(self, value: Any, limit: int, home: str | None = None, before: bool = False) -> None:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        self.value, self.length, self.head = value, len(text), text[:limit]
        self.digest = value_digest(value)
        self.home, self.before = home, before


def jsonable(value: Any, limit: int = MAX_VALUE_CHARS) -> Any:
    """A JSON-safe rendering of a value for an audit row; text longer than ``limit`` becomes a Cut."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return Cut(value, limit) if len(value) > limit else value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return jsonable(value.hex(), limit)
    if isinstance(value, Json | Jsonb):
        return column_value(value.obj, limit)
    if isinstance(value, dict):
        return {str(k): jsonable(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v, limit) for v in value]
    return jsonable(repr(value), limit)


def column_value(value: Any, limit: int, home: str | None = None, before: bool = False) -> Any:
    """A column's value (a parameter, a row's field): a JSON document is one value, cut whole."""
    if isinstance(value, Json | Jsonb):
        value = value.obj
    if isinstance(value, dict | list) and len(json.dumps(value, ensure_ascii=False, default=str)) > limit:
        return Cut(value, limit, home, before)
    out = jsonable(value, limit)
    if isinstance(out, Cut):
        out.home, out.before = home, before
    return out


class Redactor:
    """Removes configured secret values, secret-named parameters and anything shaped like a
    webhook signing secret (``whsec_...``, whoever's it is) from captured data."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def text(self, value: str) -> str:
        for s in self.secrets:
            if s in value:
                value = value.replace(s, "[REDACTED]")
        if SECRET_PREFIX in value:
            value = SECRET_PATTERN.sub("[REDACTED]", value)
        return value

    def value(self, name: str | None, value: Any) -> Any:
        if name is not None and SECRET_NAME.search(name) and value is not None:
            return "[REDACTED]"
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(None, v) for v in value]
        return value
