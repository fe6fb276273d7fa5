"""What every response carries and what every request may weigh: security headers (a strict
Content-Security-Policy per kind of response, nosniff, no referrer, no framing), a cap on request
bodies enforced while they arrive (413 before they are read whole), a 405 whose ``Allow`` lists every
method of the path, and /docs served offline (Swagger UI from the ``swagger-ui-bundle-v2`` package)
under the same CSP rules as the pages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"

# The web pages: scripts and styles from this origin only, no inline code, no string-to-DOM sinks at
# all (Trusted Types with no policy), calls only to this origin, no framing, no <base> games.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
# /docs: Swagger UI's own files from this origin, still no inline script. Two allowances, both for
# Swagger UI and both harmless to it: data: images (its CSS icons) and no Trusted Types (it renders
# the spec's Markdown descriptions, which are ours, through innerHTML).
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# Everything else (JSON, NDJSON, text, event streams, static files): nothing may run or load.
API_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
}
SECURITY_HEADERS = {**BASE_HEADERS, "Content-Security-Policy": API_CSP}


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every HTTP response; a response that set its own CSP keeps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """Refuses a request body over ``limit_for(content type)`` bytes with a 413: at once when its
    Content-Length says so, else as soon as that many bytes have arrived (a chunked upload is never
    read whole). The 413 is an HTTPException raised where the route reads, so it has the API's
    usual ``{"detail": "..."}`` shape."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit, what = self.limit_for(headers.get("content-type", ""))
        message = f"request body is larger than the {limit:,}-byte limit for {what} (QUIRE_MAX_INPUT_BYTES)"
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"detail": message}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, message, headers={"Connection": "close"})
            return msg

        await self.app(scope, limited, send)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this request's path (Starlette's own 405 names only the
    first matching route's, so ``/v1/jobs`` would say POST and forget GET)."""
    return [m for m in METHODS if any(r.matches({**scope, "method": m})[0] == Match.FULL for r in app.router.routes)]


def method_not_allowed(app: FastAPI, request: Request) -> JSONResponse:
    allow = allowed_methods(app, request.scope)
    return JSONResponse(
        {"detail": f"method {request.method} is not allowed here; allowed: {', '.join(allow)}"},
        status_code=405,
        headers={"Allow": ", ".join(allow)},
    )


def swagger_ui_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


docs_router = APIRouter(include_in_schema=False)


@docs_router.get("/docs")
async def docs_page() -> FileResponse:
    return FileResponse(STATIC / "docs.html", headers={**page_headers(), "Content-Security-Policy": DOCS_CSP})


def mount_docs(app: FastAPI) -> None:
    """/docs from files on this machine: the page and its initialiser from api/static, Swagger UI from
    the installed package (the default FastAPI page loads Swagger UI from a CDN and runs an inline
    script, neither of which works offline under this CSP)."""
    app.include_router(docs_router)
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_dir()), name="swagger-ui")


def install(app: FastAPI, limit_for: Callable[[str], tuple[int, str]]) -> None:
    """Security headers on every response, body limits on every request, complete Allow headers."""
    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so it sees every response below it

    async def _405(request: Request, exc: Exception) -> JSONResponse:
        return method_not_allowed(app, request)

    app.add_exception_handler(405, _405)


def page_headers() -> dict[str, Any]:
    return {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}
