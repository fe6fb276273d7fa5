"""Users, API keys and the account log. Keys are shown once; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from db.models import AccountEvent, ApiKey, User
from db.session import Database

KEY_PREFIX = "qk_"


@dataclass(frozen=True)
class NewUser:
    user_id: int
    name: str
    api_key: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """(key, prefix): the prefix is a public handle; the rest is the secret."""
    prefix = secrets.token_hex(4)
    return f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(24)}", prefix


async def create_user(db: Database, name: str) -> NewUser:
    async with db.tx() as s:
        existing = (await s.execute(select(User).where(User.name == name))).scalar_one_or_none()
        if existing is not None:
            raise ValueError(f"user {name!r} already exists")
        user = User(name=name)
        s.add(user)
        await s.flush()
        key = await _add_key(s, user.id)
        s.add(AccountEvent(user_id=user.id, kind="user.created", data={"name": name}))
        return NewUser(user.id, name, key)


async def add_key(db: Database, user_id: int) -> str:
    async with db.tx() as s:
        key = await _add_key(s, user_id)
        s.add(AccountEvent(user_id=user_id, kind="key.created", data={"prefix": key.split("_")[1]}))
        return key


async def _add_key(s: Any, user_id: int) -> str:
    key, prefix = new_key()
    s.add(ApiKey(user_id=user_id, prefix=prefix, key_hash=hash_key(key)))
    await s.flush()
    return key


async def user_for_key(db: Database, key: str) -> User | None:
    """The user a key belongs to, if the key exists and is not revoked."""
    async with db.tx() as s:
        return (
            await s.execute(
                select(User)
                .join(ApiKey, ApiKey.user_id == User.id)
                .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
            )
        ).scalar_one_or_none()


@dataclass(frozen=True)
class Access:
    """One request as the account log keeps it: never its headers (the API key is one)."""

    user_id: int | None
    method: str
    path: str
    status: int
    ip: str | None
    user_agent: str | None
    job_id: uuid.UUID | None


async def record_access(db: Database, a: Access) -> None:
    async with db.tx() as s:
        s.add(
            AccountEvent(
                user_id=a.user_id,
                kind="access",
                method=a.method,
                path=a.path,
                status=a.status,
                ip=a.ip,
                user_agent=a.user_agent,
                job_id=a.job_id,
            )
        )
