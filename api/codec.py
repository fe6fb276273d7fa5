"""The codec server: the Temporal Web UI (and the Temporal CLI) decode Quire's encrypted payloads
through it, for operators only (README: "Reading workflows in the Temporal UI").

``POST /codec/decode`` and ``POST /codec/encode`` take and return ``{"payloads": [...]}`` (Temporal's
Payloads in protobuf JSON), as the UI and ``temporal --codec-endpoint`` send them (the shape of
temporalio/samples-python ``encryption/codec_server.py``), and answer only an operator:

- ``Authorization: Bearer <QUIRE_OPERATOR_TOKEN>`` (the CLI's ``--codec-auth``, scripts);
- or, for the UI in a browser, the session cookie that signing in at ``/codec`` sets (HttpOnly,
  SameSite=Strict, signed with the token, so a new token ends every session): the UI's fetch sends it
  when its codec setting "Include cross-origin credentials" is on.

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
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from services.codec import CodecKeyError

log = structlog.get_logger(__name__)
COOKIE = "quire_codec"
SESSION_S = 12 * 3600
# The sign-in page: a form and nothing else (no script at all).
PAGE_CSP = "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"


def session_value(token: str, expires: int) -> str:
    """``<expiry>.<HMAC-SHA256 of it under the token>``: no state to keep, and void once the token changes."""
    mac = hmac.new(hashlib.sha256(token.encode()).digest(), f"codec-session:{expires}".encode(), "sha256")
    return f"{expires}.{mac.hexdigest()}"


def _valid_session(token: str, value: str) -> bool:
    expires = value.partition(".")[0]
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(value, session_value(token, int(expires)))


def mount(app: FastAPI, token: str | None, origins: list[str]) -> None:
    """Serve the codec server under ``/codec`` of ``app`` (whose state holds the Temporal client and
    so the codec); without a token it answers 404 saying how to turn it on."""

    def refusal(request: Request) -> Response | None:
        if token is None:
            return JSONResponse(
                {"detail": "the codec server is off: set QUIRE_OPERATOR_TOKEN (quire up makes one)"}, 404
            )
        given = request.headers.get("authorization", "")
        if given and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        if not given and _valid_session(token, request.cookies.get(COOKIE, "")):
            return None
        return JSONResponse(
            {"detail": "operators only: Authorization: Bearer <QUIRE_OPERATOR_TOKEN>, or sign in at /codec"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def convert(request: Request, decode: bool) -> Response:
        refused = refusal(request)
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
        signed_in = token is not None and _valid_session(token, request.cookies.get(COOKIE, ""))
        state = "signed in: the Temporal UI may decode in this browser" if signed_in else "not signed in"
        if token is None:
            state = "off: set QUIRE_OPERATOR_TOKEN (quire up makes one)"
        body = (
            "<!doctype html><html lang=en><meta charset=utf-8><title>Quire codec server</title>"
            f"<h1>Quire codec server</h1><p>{escape(state)}</p>"
            '<form method=post action="/codec/session"><label>Operator token '
            "<input type=password name=token autocomplete=off required></label> <button>Sign in</button></form>"
            '<form method=post action="/codec/session?end=1"><button>Sign out</button></form>'
        )
        return HTMLResponse(body, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})

    async def session(request: Request) -> Response:
        """Sign in (the page's form, or JSON ``{"token"}``): a cookie for this browser; ``?end=1`` signs out."""
        done = RedirectResponse("/codec", status_code=303)
        if request.query_params.get("end"):
            done.delete_cookie(COOKIE, path="/codec")
            return done
        if token is None:
            return JSONResponse({"detail": "the codec server is off: set QUIRE_OPERATOR_TOKEN"}, 404)
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                given = str((await request.json()).get("token", ""))
            else:
                given = str((await request.form()).get("token", ""))
        except (ValueError, AttributeError):
            return JSONResponse({"detail": 'send the token as a form field or JSON {"token": "..."}'}, 400)
        if not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("codec.sign_in_refused", ip=request.client.host if request.client else None)
            return JSONResponse({"detail": "wrong operator token"}, 401)
        expires = int(time.time()) + SESSION_S
        done.set_cookie(
            COOKIE,
            session_value(token, expires),
            max_age=SESSION_S,
            path="/codec",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        log.info("codec.signed_in", ip=request.client.host if request.client else None)
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
