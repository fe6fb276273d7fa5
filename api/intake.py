"""Request intake: a submit request (JSON, or multipart with a file) becomes a ``JobSpec``, or a
422 that names each bad field. ``invalid`` is the one builder of 422 bodies in the API."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import HTTPException, Request
from pydantic import ValidationError

from core.spec import JOB_KINDS, MAX_TARGET_WORDS, MIN_TARGET_WORDS, TARGET_WORDS_RULE, JobSpec

MULTIPART_SLACK = 1_048_576  # form fields and boundaries around an uploaded file
JSON_GROWTH = 6  # JSON escaping can grow text up to 6x (\u0001)
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_INT = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only: str.isdigit() also accepts "²", which int() rejects


def invalid(loc: list[str | int], msg: str, type_: str) -> HTTPException:
    """A 422 shaped like FastAPI's own: ``{"detail": [{"loc", "msg", "type"}]}``."""
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": type_}])


def int_or_none(s: str | None) -> int | None:
    return int(s) if s is not None and _INT.fullmatch(s.strip()) else None


async def read_spec(request: Request, cap: int) -> tuple[JobSpec, str | None]:
    """The request's job spec and the uploaded file's name, or a 422 naming what is wrong."""
    filename = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        raw, filename = await _multipart_body(request, cap)
    else:
        raw = await _json_body(request, cap)
    problems = _text_problems(raw, ["body"])
    if problems:
        raise HTTPException(422, problems)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise HTTPException(422, _spec_errors(exc)) from None
    if spec.input_text is not None and len(spec.input_text.encode("utf-8")) > cap:
        raise _too_large(["body", "input_text"], "input_text", cap)
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
    bad = _BAD_TEXT.search(value)
    if bad is None:
        return []
    name = ".".join(str(x) for x in loc[1:]) or "body"
    if bad.group() == "\x00":
        return [{"loc": loc, "type": "nul", "msg": f"{name} contains a NUL character (at {bad.start()})"}]
    return [{"loc": loc, "type": "not_utf8", "msg": f"{name} is not valid Unicode (lone surrogate at {bad.start()})"}]


def _too_large(loc: list[str | int], what: str, cap: int) -> HTTPException:
    return invalid(loc, f"{what} is larger than the {cap:,}-byte limit (QUIRE_MAX_INPUT_BYTES)", "too_large")


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (read no further)."""
    declared = int_or_none(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        return None
    buf = bytearray()
    async for part in request.stream():
        buf += part
        if len(buf) > limit:
            return None
    return bytes(buf)


async def _multipart_body(request: Request, cap: int) -> tuple[dict[str, Any], str | None]:
    declared = int_or_none(request.headers.get("content-length"))
    if declared is not None and declared > cap + MULTIPART_SLACK:
        raise _too_large(["body", "file"], "input", cap)
    form = await request.form()
    raw: dict[str, Any] = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
    filename = None
    upload = form.get("file")
    if upload is not None and not isinstance(upload, str):
        # A name to show later, not a path: no directories, no characters text can't hold.
        filename = (
            _BAD_TEXT.sub("", (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1])[:255] or "upload.txt"
        )
        if not filename.lower().endswith((".txt", ".md", ".markdown")):
            raise invalid(["body", "file"], "file must be a .txt or .md document", "file_type")
        data = await upload.read(cap + 1)
        if len(data) > cap:
            raise _too_large(["body", "file"], "input", cap)
        try:
            raw["input_text"] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid(
                ["body", "file"], f"input is not UTF-8 text (invalid byte at offset {exc.start})", "not_utf8"
            ) from None
        raw.setdefault("kind", "rewrite")
    if "target_words" in raw:
        tw = raw["target_words"].strip()
        as_int = int_or_none(tw)
        raw["target_words"] = tw if as_int is None else as_int
    if "options" in raw:
        try:
            raw["options"] = json.loads(raw["options"])
        except ValueError:
            raise invalid(["body", "options"], "options must be a JSON object", "json") from None
    return raw, filename


async def _json_body(request: Request, cap: int) -> dict[str, Any]:
    limit = JSON_GROWTH * cap + MULTIPART_SLACK
    body = await _read_capped(request, limit)
    if body is None:
        raise _too_large(["body"], "request body", limit)
    try:
        raw = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise invalid(["body"], f"body is not UTF-8 (invalid byte at offset {exc.start})", "not_utf8") from None
    except (ValueError, RecursionError) as exc:
        raise invalid(["body"], f"body is not valid JSON: {exc}", "json") from None
    if not isinstance(raw, dict):
        raise invalid(["body"], "body must be a JSON object", "json")
    return raw


MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["target_words", "file"],
    "properties": {
        "kind": {"type": "string", "enum": list(JOB_KINDS), "default": "rewrite"},
        "target_words": {"type": "integer", "minimum": MIN_TARGET_WORDS, "maximum": MAX_TARGET_WORDS},
        "prompt": {"type": "string"},
        "title": {"type": "string"},
        "model": {"type": "string"},
        "options": {"type": "string", "description": "JSON object of job options"},
        "file": {"type": "string", "format": "binary", "description": "the input document: .txt or .md, UTF-8"},
    },
}


def openapi_components() -> dict[str, Any]:
    """Schemas the submit route's hand-written request body refers to (app.py adds them)."""
    spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    # What the model's validator checks, said in the schema: each kind's required text.
    spec["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": kind}}},
            "then": {"required": [field], "properties": {field: {"type": "string", "pattern": "\\S"}}},
        }
        for kind, field in (("generate", "prompt"), ("rewrite", "input_text"))
    ]
    return {"JobSpec": {k: v for k, v in spec.items() if k != "$defs"}, **spec.get("$defs", {})}
