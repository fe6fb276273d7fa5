"""Bearer API keys, and the account-level access log."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from db.models import AccountEvent, ApiKey, User
from db.session import Database
from quire.accounts import hash_key

bearer = HTTPBearer(auto_error=False, description="An API key from `quire user add NAME` or `quire up`")


@dataclass(frozen=True)
class Caller:
    user_id: int
    name: str


async def authenticate(db: Database, request: Request, creds: HTTPAuthorizationCredentials | None) -> Caller:
    if creds is None or not creds.credentials:
        raise HTTPException(
            401, "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    async with db.tx() as s:
        row = (
            await s.execute(
                select(User.id, User.name)
                .join(ApiKey, ApiKey.user_id == User.id)
                .where(ApiKey.key_hash == hash_key(creds.credentials), ApiKey.revoked_at.is_(None))
            )
        ).first()
    if row is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    caller = Caller(row.id, row.name)
    request.state.caller = caller
    return caller


async def record_access(db: Database, request: Request, status: int) -> None:
    caller: Caller | None = getattr(request.state, "caller", None)
    job_id = request.path_params.get("job_id") if request.path_params else None
    async with db.tx() as s:
        s.add(
            AccountEvent(
                user_id=caller.user_id if caller else None,
                kind="access",
                method=request.method,
                path=request.url.path,
                status=status,
                ip=request.client.host if request.client else None,
                user_agent=request.headers.get("user-agent"),
                job_id=_uuid_or_none(job_id),
            )
        )


def _uuid_or_none(v: object) -> object:
    import uuid

    try:
        return uuid.UUID(str(v)) if v is not None else None
    except ValueError:
        return None
