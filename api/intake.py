"""Request intake: a submit request (JSON, or multipart with a file) becomes a ``JobSpec``, or a
4xx that says what is wrong: 415 for a body that is neither JSON nor multipart, 413 for anything over
the size limits, 422 naming each bad field. ``invalid`` is the one builder of 422 bodies in the API;
every other error is ``{"detail": "..."}``."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import HTTPException, Request
from pydantic import ValidationError

from core.spec import (
    JOB_KINDS,
    MAX_PROMPT_CHARS,
    MAX_TARGET_WORDS,
    MAX_URL_CHARS,
    MIN_TARGET_WORDS,
    PARALLELISM_RULE,
    TARGET_WORDS_RULE,
    JobSpec,
    input_problem,
)
from core.webhooks import URL_PATTERN

MAX_TITLE_CHARS = 500  # JobSpec.title

MULTIPART_SLACK = 1_048_576  # form fields and boundaries around an uploaded file
JSON_GROWTH = 6  # JSON escaping can grow text up to 6x (\u0001)
# Text a job may hold: no control characters but tab, newline and carriage return (Postgres text
# cannot hold NUL; the rest is never prose and only hides things), no lone surrogates (JSON escapes
# can make them; UTF-8 cannot encode them). TEXT_PATTERN says the same in the OpenAPI schema.
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
JSON_TYPES = ("application/json",)
IDEMPOTENCY_KEY_MAX = 200
IDEMPOTENCY_KEY_PATTERN = f"^[\\x20-\\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}$"  # printable ASCII
SEQ_PATTERN = "^[0-9]{1,18}$"
_INT = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only: str.isdigit() also accepts "²", which int() rejects


def invalid(loc: list[str | int], msg: str, type_: str) -> HTTPException:
    """A 422 shaped like FastAPI's own: ``{"detail": [{"loc", "msg", "type"}]}``."""
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": type_}])


def int_or_none(s: str | None) -> int | None:
    return int(s) if s is not None and _INT.fullmatch(s.strip()) else None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def body_limit(content_type: str, cap: int) -> tuple[int, str]:
    """The most bytes a request body may have, and what kind of body that limit is for."""
    if content_type.partition(";")[0].strip().lower() == "multipart/form-data":
        return cap + MULTIPART_SLACK, "an upload"
    return JSON_GROWTH * cap + MULTIPART_SLACK, "a JSON body"


def idempotency_key(value: str | None) -> str | None:
    """The header's value, or a 422 when it is empty, too long, or not visible ASCII."""
    if value is None:
        return None
    if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, value):
        if not value:
            why = "is empty"
        elif len(value) > IDEMPOTENCY_KEY_MAX:
            why = f"is {len(value):,} characters long"
        else:
            why = "has a character that is not printable ASCII"
        raise invalid(
            ["header", "idempotency-key"],
            f"Idempotency-Key {why}: send 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters, or no header",
            "idempotency_key",
        )
    return value


def last_event_id(value: str | None) -> int | None:
    """The seq a reconnecting stream resumes after, or a 400: a malformed one must not restart the
    stream at seq 1 (a client would see every event again) nor silently skip ahead."""
    if value is None:
        return None
    if not re.fullmatch(SEQ_PATTERN, value.strip()):
        raise HTTPException(400, f"Last-Event-ID must be an audit seq, a whole number (got {value[:40]!r})")
    return int(value)


async def read_spec(request: Request, cap: int, models: list[str]) -> tuple[JobSpec, str | None]:
    """The request's job spec and the uploaded file's name, or a 4xx saying what is wrong."""
    filename = None
    media = media_type(request)
    if media == "multipart/form-data":
        raw, filename = await _multipart_body(request, cap)
    elif media in JSON_TYPES:
        raw = await _json_body(request, cap)
    else:
        got = repr(media) if media else "none"
        raise HTTPException(415, f"Content-Type must be application/json or multipart/form-data (got {got})")
    problems = _text_problems(raw, ["body"])
    if problems:
        raise HTTPException(422, problems)
    try:
        # Strict: JSON types as the schema says them (0 is no boolean, "700" no integer); 300.0 is
        # an integer in JSON and in JSON Schema, so integral numbers are made ints first.
        spec = JobSpec.model_validate(_integral(raw), strict=True)
    except ValidationError as exc:
        raise HTTPException(422, _spec_errors(exc)) from None
    if spec.input_text is not None and len(spec.input_text.encode("utf-8")) > cap:
        raise _too_large("input_text", cap)
    if spec.model is not None and spec.model not in models:
        allowed = ", ".join(repr(m) for m in models)
        raise invalid(["body", "model"], f"model {spec.model!r} is not allowed; allowed: {allowed}", "model")
    return spec, filename


def _spec_errors(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = [str(x) for x in e["loc"]]
        field = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if loc == ["target_words"] and e["type"] == "missing":
            msg = f"missing field 'target_words' ({TARGET_WORDS_RULE})"
        elif loc[:1] == ["target_words"]:
            got = json.dumps(e.get("input"), ensure_ascii=False)
            msg = f"target_words must be {TARGET_WORDS_RULE} (got {got})"
        elif loc == ["options", "parallelism"] and e["type"] != "missing":
            got = json.dumps(e.get("input"), ensure_ascii=False)
            msg = f"options.parallelism must be {PARALLELISM_RULE} (got {got})"
        elif e["type"] == "extra_forbidden":
            msg = f"unknown field {field!r}"
        elif e["type"] == "missing":
            msg = f"missing field {field!r}"
        out.append({"loc": ["body", *loc], "msg": msg, "type": e["type"]})
    return out


def _text_problems(value: Any, loc: list[str | int]) -> list[dict[str, Any]]:
    """Strings that Postgres text cannot hold: lone surrogates (JSON escapes can make them) and NUL."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _text_problems(v, [*loc, str(k)])]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _text_problems(v, [*loc, i])]
    if not isinstance(value, str):
        return []
    return text_problem(value, ".".join(str(x) for x in loc[1:]) or "body", loc)


def text_problem(value: str, name: str, loc: list[str | int]) -> list[dict[str, Any]]:
    """[] for text a job may hold, else the one error that names the field and the first bad character."""
    bad = _BAD_TEXT.search(value)
    if bad is None:
        return []
    ch, at = bad.group(), bad.start()
    if ch == "\x00":
        return [{"loc": loc, "type": "nul", "msg": f"{name} contains a NUL character (at {at})"}]
    if "\ud800" <= ch <= "\udfff":
        return [{"loc": loc, "type": "not_utf8", "msg": f"{name} is not valid Unicode (lone surrogate at {at})"}]
    return [
        {
            "loc": loc,
            "type": "control_character",
            "msg": f"{name} contains control character U+{ord(ch):04X} (at {at}); "
            "only tab, newline and carriage return are allowed",
        }
    ]


def _too_large(what: str, cap: int) -> HTTPException:
    return HTTPException(413, f"{what} is larger than the {cap:,}-byte limit (QUIRE_MAX_INPUT_BYTES)")


async def _multipart_body(request: Request, cap: int) -> tuple[dict[str, Any], str | None]:
    # The body's size is capped as it arrives (api.security.BodyLimit); the file's own size below.
    form = await request.form()
    raw: dict[str, Any] = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
    filename = None
    upload = form.get("file")
    if upload is None:
        return _form_fields(raw), None
    if isinstance(upload, str):  # the document's text as a plain form field (no file name)
        data = upload.encode("utf-8", "surrogatepass")
    else:
        # A name to show later, not a path: no directories, no characters text can't hold.
        filename = (
            _BAD_TEXT.sub("", (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1])[:255] or "upload.txt"
        )
        data = await upload.read(cap + 1)
    if len(data) > cap:
        raise _too_large("the uploaded file", cap)
    problem = input_problem(data, filename or "the file field")
    if problem is not None:
        raise invalid(["body", "file"], problem[1], problem[0])
    text = data.decode("utf-8")
    problems = text_problem(text, "file", ["body", "file"])
    if problems:
        raise HTTPException(422, problems)
    raw["input_text"] = text
    raw.setdefault("kind", "rewrite")
    return _form_fields(raw), filename


def _form_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """Form fields are text: target_words and options become what JSON would have sent."""
    if "target_words" in raw:
        tw = raw["target_words"].strip()
        as_int = int_or_none(tw)
        raw["target_words"] = tw if as_int is None else as_int
    if "options" in raw:
        try:
            raw["options"] = json.loads(raw["options"])
        except ValueError:
            raise invalid(["body", "options"], "options must be a JSON object", "json") from None
    return raw


async def _json_body(request: Request, cap: int) -> dict[str, Any]:
    body = await request.body()  # capped as it arrives (api.security.BodyLimit)
    try:
        raw = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise invalid(["body"], f"body is not UTF-8 (invalid byte at offset {exc.start})", "not_utf8") from None
    except (ValueError, RecursionError) as exc:
        raise invalid(["body"], f"body is not valid JSON: {exc}", "json") from None
    if not isinstance(raw, dict):
        raise invalid(["body"], "body must be a JSON object", "json")
    return raw


def _integral(value: Any) -> Any:
    """``value`` with every float that is a whole number as an int (bools stay bools)."""
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def multipart_schema(models: list[str]) -> dict[str, Any]:
    """The multipart form of a submit request, as the OpenAPI schema says it."""
    text = {"type": "string", "pattern": TEXT_PATTERN}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["target_words", "file"],
        "properties": {
            "kind": {"type": "string", "enum": list(JOB_KINDS), "default": "rewrite"},
            "target_words": {"type": "integer", "minimum": MIN_TARGET_WORDS, "maximum": MAX_TARGET_WORDS},
            "prompt": {**text, "maxLength": MAX_PROMPT_CHARS},
            "title": {**text, "maxLength": MAX_TITLE_CHARS},
            "model": {"type": "string", "enum": models},
            "webhook_url": {"type": "string", "pattern": URL_PATTERN, "maxLength": MAX_URL_CHARS},
            # A JSON object in its own part (the request body's encoding says application/json).
            "options": {"$ref": "#/components/schemas/JobOptions"},
            "file": {
                # Text, not format: binary: what is accepted is UTF-8 text, and the spec says so.
                **text,
                "contentMediaType": "text/plain",
                "description": "the input document: a .txt or .md file (or its text as a plain field) of "
                "UTF-8 text without control characters but tab, newline and carriage return, at most "
                "QUIRE_MAX_INPUT_BYTES",
            },
        },
        # What intake checks beyond each field: the text each kind needs (kind defaults to rewrite here).
        "allOf": [
            {
                "if": {"required": ["kind"], "properties": {"kind": {"const": "generate"}}},
                "then": {"required": ["prompt"], "properties": {"prompt": {"pattern": "\\S"}}},
                "else": {"properties": {"file": {"pattern": "\\S"}}},
            }
        ],
    }


def openapi_components(models: list[str]) -> dict[str, Any]:
    """Schemas the submit route's hand-written request body refers to (app.py adds them), with what
    intake checks beyond the model said in the schema: text without control characters, the allowed
    models, each kind's required text."""
    spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    props = spec["properties"]
    for field in ("prompt", "title", "input_text"):
        for variant in props[field].get("anyOf", [props[field]]):
            if variant.get("type") == "string":
                variant["pattern"] = TEXT_PATTERN
    props["input_text"]["description"] = "the document to rewrite: UTF-8 text of at most QUIRE_MAX_INPUT_BYTES"
    props["model"] = {"anyOf": [{"type": "string", "enum": models}, {"type": "null"}], "default": None}
    props["model"]["description"] = "the model to write with (default: the configured QUIRE_MODEL)"
    for variant in props["webhook_url"].get("anyOf", []):
        if variant.get("type") == "string":
            variant["pattern"] = URL_PATTERN
    spec["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": kind}}},
            "then": {"required": [field], "properties": {field: {"type": "string", "pattern": "\\S"}}},
        }
        for kind, field in (("generate", "prompt"), ("rewrite", "input_text"))
    ]
    return {"JobSpec": {k: v for k, v in spec.items() if k != "$defs"}, **spec.get("$defs", {})}
