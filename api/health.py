"""``/healthz`` (the process is alive) and ``/readyz`` (Postgres, Temporal and the live-stream
listener are up). Readiness says ready or not with a reason code per check, never an error's
text: anyone may ask, and an exception's message can name hosts, users and paths (the server log
has it)."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.errors import unavailable
from api.schemas import ERRORS, Health, Readiness

log = structlog.get_logger(__name__)
router = APIRouter(tags=["health"])


def _code(exc: Exception) -> str:
    """``unreachable`` (down, refusing, timing out: worth waiting for) or ``error`` (anything else)."""
    return "unreachable" if unavailable(exc) or isinstance(exc, OSError | TimeoutError) else "error"


@router.get("/healthz", summary="The process is alive", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Postgres, Temporal and the live-stream listener are up",
    response_model=Readiness,
    responses={
        503: {"model": Readiness, "description": "something is not reachable; each check says what, as a code"},
        500: ERRORS[500],
    },
)
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with request.app.state.db.tx() as s:
            await s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = _code(exc)
        log.warning("readyz.database", error=f"{type(exc).__name__}: {exc}")
    try:
        await request.app.state.client.service_client.check_health()
        checks["temporal"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["temporal"] = _code(exc)
        log.warning("readyz.temporal", error=f"{type(exc).__name__}: {exc}")
    checks["listener"] = "ok" if request.app.state.listener.ready.is_set() else "connecting"
    bad = [f"{name}_{state}" for name, state in checks.items() if state != "ok"]
    body = {"status": "not ready" if bad else "ready", "reason": bad[0] if bad else None, **checks}
    return JSONResponse(body, status_code=503 if bad else 200)
