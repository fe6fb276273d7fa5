"""The codec server: the Temporal Web UI (and the Temporal CLI) decode Quire's encrypted payloads
through it, for operators only (README: "Reading workflows in the Temporal UI").

``POST /codec/decode`` and ``POST /codec/encode`` take and return ``{"payloads": [...]}`` (Temporal's
Payloads in protobuf JSON), as the UI and ``temporal --codec-endpoint`` send them (the shape of
temporalio/samples-python ``encryption/codec_server.py``), and answer only an operator:

- ``Authorization: Bearer <QUIRE_OPERATOR_TOKEN>`` (the CLI's ``--codec-auth``, scripts);
- or, for the UI in a browser, the session cookie that signing in at ``/codec`` sets (HttpOnly,
  SameSite=Strict, signed with the token, so a new token ends every session): the UI's fetch sends it
  when its codec setting "Include cross-origin credentials" is on. Each session is a row
  (``codec_sessions``): signing out ends it on the server, and ``POST /codec/session?end=all`` (an
  operator) ends every one, whatever their 12 hours. Sign-ins with a wrong token are limited per
  address (``SIGN_IN_LIMIT``: 429 with Retry-After past it).

CORS answers only the UI's origins (QUIRE_CODEC_ORIGINS), with credentials; the routes accept JSON
only, so a page elsewhere cannot post to them without a preflight that is refused. Temporal still
stores ciphertext: this decodes in memory, for the asking operator, and logs counts, never content.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from html import escape

import structlog
from fastapi import FastAPI
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from services.codec import CodecKeyError, open_session, revoke_sessions, session_live

log = structlog.get_logger(__name__)
COOKIE = "quire_codec"
SESSION_S = 12 * 3600
SIGN_IN_LIMIT = parse("10/minute")  # wrong tokens per client address, per API process
# The sign-in page: a form and nothing else (no script at all).
PAGE_CSP = "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"


def session_value(token: str, sid: str, expires: int) -> str:
    """``<session id>.<expiry>.<HMAC-SHA256 of both under the token>``: void once the token changes."""
    mac = hmac.new(hashlib.sha256(token.encode()).digest(), f"codec-session:{sid}:{expires}".encode(), "sha256")
    return f"{sid}.{expires}.{mac.hexdigest()}"


def _session_id(token: str, value: str) -> str | None:
    """The session a cookie names, if it is one this token signed and it has not expired."""
    sid, _, rest = value.partition(".")
    expires = rest.partition(".")[0]
    if not sid.isalnum() or not expires.isdigit() or int(expires) < time.time():
        return None
    return sid if hmac.compare_digest(value, session_value(token, sid, int(expires))) else None


def mount(app: FastAPI, token: str | None, origins: list[str]) -> None:
    """Serve the codec server under ``/codec`` of ``app`` (whose state holds the Temporal client and
    so the codec); without a token it answers 404 saying how to turn it on."""

    attempts = MovingWindowRateLimiter(MemoryStorage())

    async def signed_in(request: Request) -> str | None:
        """The live session of the request's cookie (checked in the database: it may have been ended)."""
        sid = _session_id(token, request.cookies.get(COOKIE, "")) if token is not None else None
        return sid if sid is not None and await session_live(app.state.db, sid) else None

    async def refusal(request: Request) -> Response | None:
        if token is None:
            return JSONResponse(
                {"detail": "the codec server is off: set QUIRE_OPERATOR_TOKEN (quire up makes one)"}, 404
            )
        given = request.headers.get("authorization", "")
        if given and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        if not given and await signed_in(request) is not None:
            return None
        return JSONResponse(
            {"detail": "operators only: Authorization: Bearer <QUIRE_OPERATOR_TOKEN>, or sign in at /codec"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def convert(request: Request, decode: bool) -> Response:
        refused = await refusal(request)
        if refused is not None:
            return refused
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"detail": 'send {"payloads": [...]} as application/json'}, 415)
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
            return JSONResponse({"detail": f"not Temporal Payloads JSON: {exc}"}, 400)
        codec = app.state.client.data_converter.payload_codec
        try:
            out = await (codec.decode if decode else codec.encode)(payloads.payloads)
        except CodecKeyError as exc:
            return JSONResponse({"detail": str(exc)}, 400)
        except Exception:  # noqa: BLE001 - a forged or damaged ciphertext: say so, show nothing of it
            return JSONResponse({"detail": "a payload could not be decrypted (damaged, or not Quire's)"}, 400)
        log.info(
            "codec.decode" if decode else "codec.encode",
            payloads=len(out),
            namespace=request.headers.get("x-namespace"),
            by="bearer" if request.headers.get("authorization") else "session",
        )
        return Response(json_format.MessageToJson(Payloads(payloads=out)), media_type="application/json")

    async def decode(request: Request) -> Response:
        return await convert(request, decode=True)

    async def encode(request: Request) -> Response:
        return await convert(request, decode=False)

    async def page(request: Request) -> Response:
        live = await signed_in(request) is not None
        state = "signed in: the Temporal UI may decode in this browser" if live else "not signed in"
        if token is None:
            state = "off: set QUIRE_OPERATOR_TOKEN (quire up makes one)"
        body = (
            "<!doctype html><html lang=en><meta charset=utf-8><title>Quire codec server</title>"
            f"<h1>Quire codec server</h1><p>{escape(state)}</p>"
            '<form method=post action="/codec/session"><label>Operator token '
            "<input type=password name=token autocomplete=off required></label> <button>Sign in</button></form>"
            '<form method=post action="/codec/session?end=1"><button>Sign out</button></form>'
            '<form method=post action="/codec/session?end=all"><button>Sign out every browser</button></form>'
        )
        return HTMLResponse(body, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})

    async def session(request: Request) -> Response:
        """Sign in (the page's form, or JSON ``{"token"}``): a cookie for this browser; ``?end=1`` signs
        out (the session ends on the server too); ``?end=all`` (an operator) ends every session."""
        done = RedirectResponse("/codec", status_code=303)
        ip = request.client.host if request.client else "-"
        end = request.query_params.get("end")
        if end == "all":
            refused = await refusal(request)
            if refused is not None:
                return refused
            ended = await revoke_sessions(app.state.db)
            log.info("codec.sessions_revoked", sessions=ended, ip=ip)
            done.delete_cookie(COOKIE, path="/codec")
            return done
        if end:
            sid = await signed_in(request)
            if sid is not None:
                await revoke_sessions(app.state.db, sid)
            done.delete_cookie(COOKIE, path="/codec")
            return done
        if token is None:
            return JSONResponse({"detail": "the codec server is off: set QUIRE_OPERATOR_TOKEN"}, 404)
        if not attempts.test(SIGN_IN_LIMIT, "codec", ip):
            wait = max(1, int(attempts.get_window_stats(SIGN_IN_LIMIT, "codec", ip).reset_time - time.time()) + 1)
            return JSONResponse(
                {"detail": f"too many wrong operator tokens from this address ({SIGN_IN_LIMIT}); wait {wait} s"},
                429,
                headers={"Retry-After": str(wait)},
            )
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                given = str((await request.json()).get("token", ""))
            else:
                given = str((await request.form()).get("token", ""))
        except (ValueError, AttributeError):
            return JSONResponse({"detail": 'send the token as a form field or JSON {"token": "..."}'}, 400)
        if not hmac.compare_digest(given.encode(), token.encode()):
            attempts.hit(SIGN_IN_LIMIT, "codec", ip)
            log.warning("codec.sign_in_refused", ip=ip)
            return JSONResponse({"detail": "wrong operator token"}, 401)
        sid, expires = await open_session(app.state.db, SESSION_S, ip)
        done.set_cookie(
            COOKIE,
            session_value(token, sid, expires),
            max_age=SESSION_S,
            path="/codec",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        log.info("codec.signed_in", ip=ip)
        return done

    codec = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/session", session, methods=["POST"]),
            Route("/decode", decode, methods=["POST"]),
            Route("/encode", encode, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_credentials=True,
                allow_methods=["POST"],
                allow_headers=["content-type", "x-namespace", "authorization"],
                max_age=600,
            )
        ],
    )
    app.mount("/codec", codec)
