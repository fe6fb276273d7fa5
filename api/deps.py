"""Typed dependencies of the routes: the app's database, Temporal client, settings and live-stream
listener; the authenticated caller (a Bearer API key); and the caller's own job from the path.

Another user's job answers 404 exactly as a job that does not exist, on every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.limits import RateLimits, StreamSlots
from api.live import AuditListener
from db.models import Job
from db.session import Database
from services.accounts import key_active, user_for_key
from services.config import Settings
from services.views import own_job


def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def _client(request: Request) -> Client:
    return request.app.state.client  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _listener(request: Request) -> AuditListener:
    return request.app.state.listener  # type: ignore[no-any-return]


DbDep = Annotated[Database, Depends(_db)]
ClientDep = Annotated[Client, Depends(_client)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ListenerDep = Annotated[AuditListener, Depends(_listener)]


def _streams(request: Request) -> StreamSlots:
    return request.app.state.streams  # type: ignore[no-any-return]


StreamsDep = Annotated[StreamSlots, Depends(_streams)]

bearer = HTTPBearer(auto_error=False, description="An API key from `quire user add NAME` or `quire up`")


@dataclass(frozen=True)
class Caller:
    user_id: int
    name: str
    key_id: int
    key_prefix: str


async def _caller(
    request: Request, db: DbDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    limits: RateLimits = request.app.state.limits
    ip = request.client.host if request.client else None
    limits.check_address(ip)  # an address that keeps failing is slowed down before any lookup
    if creds is None or not creds.credentials:
        limits.failed(ip)
        raise HTTPException(
            401, "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    owner = await user_for_key(db, creds.credentials)
    if owner is None:
        limits.failed(ip)
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    caller = Caller(owner.user_id, owner.name, owner.key_id, owner.prefix)
    request.state.caller = caller  # for the access log
    limits.request(owner.key_id)
    return caller


CallerDep = Annotated[Caller, Depends(_caller)]


def _key_still_valid(who: CallerDep, db: DbDep) -> Callable[[], Awaitable[bool]]:
    """For long requests (live streams): whether the caller's key is still in use, asked later."""

    async def check() -> bool:
        return await key_active(db, who.key_id)

    return check


KeyStillValidDep = Annotated[Callable[[], Awaitable[bool]], Depends(_key_still_valid)]


async def _own_job(job_id: str, who: CallerDep, db: DbDep) -> Job:
    job = await own_job(db, job_id, who.user_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


OwnJobDep = Annotated[Job, Depends(_own_job)]
