"""Users, API keys and the account log. Keys are shown once; only their sha256 is stored.

A key is checked on every request (no cache), so a revocation or a rotation takes effect at once.
Each one is recorded in ``account_events`` with the keys' prefixes (public handles), never a key."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from core.quota import Quotas
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
    """A new key for a user (shown once): the way back in after a revocation."""
    async with db.tx() as s:
        key = await _add_key(s, user_id)
        s.add(AccountEvent(user_id=user_id, kind="key.created", data={"prefix": key.split("_")[1]}))
        return key


async def add_key_for(db: Database, name: str) -> str:
    """``add_key`` by user name; ``UnknownUser`` if there is none."""
    async with db.tx() as s:
        uid = await _user_id(s, name)
    return await add_key(db, uid)


async def _add_key(s: Any, user_id: int) -> str:
    key, prefix = new_key()
    s.add(ApiKey(user_id=user_id, prefix=prefix, key_hash=hash_key(key)))
    await s.flush()
    return key


@dataclass(frozen=True)
class KeyOwner:
    """Who a valid key belongs to, and which key it is."""

    user_id: int
    name: str
    key_id: int
    prefix: str


async def user_for_key(db: Database, key: str) -> KeyOwner | None:
    """The owner of a key, if the key exists and is not revoked."""
    async with db.tx() as s:
        row = (
            await s.execute(
                select(User.id, User.name, ApiKey.id, ApiKey.prefix)
                .join(ApiKey, ApiKey.user_id == User.id)
                .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
            )
        ).first()
        return KeyOwner(*row) if row is not None else None


async def key_active(db: Database, key_id: int) -> bool:
    async with db.tx() as s:
        revoked = (await s.execute(select(ApiKey.revoked_at).where(ApiKey.id == key_id))).first()
        return revoked is not None and revoked[0] is None


class UnknownUser(LookupError):
    """No user has this name."""


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


async def _user_id(s: Any, name: str) -> int:
    uid = (await s.execute(select(User.id).where(User.name == name))).scalar_one_or_none()
    if uid is None:
        raise UnknownUser(f"no user {name!r}")
    return int(uid)


async def list_keys(db: Database, name: str) -> list[KeyInfo]:
    """A user's keys, oldest first: prefix, created, revoked (the keys themselves are not stored)."""
    async with db.tx() as s:
        uid = await _user_id(s, name)
        rows = await s.execute(
            select(ApiKey.prefix, ApiKey.created_at, ApiKey.revoked_at)
            .where(ApiKey.user_id == uid)
            .order_by(ApiKey.created_at, ApiKey.id)
        )
        return [KeyInfo(*r) for r in rows]


async def revoke_user_keys(db: Database, name: str) -> list[str]:
    """Revoke every key of a user still in use; the prefixes revoked (none: nothing was in use)."""
    async with db.tx() as s:
        uid = await _user_id(s, name)
        revoked = (
            (
                await s.execute(
                    update(ApiKey)
                    .where(ApiKey.user_id == uid, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=func.now())
                    .returning(ApiKey.prefix)
                )
            )
            .scalars()
            .all()
        )
        if revoked:
            s.add(AccountEvent(user_id=uid, kind="key.revoked", data={"prefixes": sorted(revoked), "by": "admin"}))
        return sorted(revoked)


class KeyRevoked(LookupError):
    """The key was revoked (or rotated) while the request was under way."""


@dataclass(frozen=True)
class RotatedKey:
    api_key: str
    prefix: str
    revoked_prefix: str


async def rotate_key(db: Database, owner: KeyOwner, *, method: str, path: str, ip: str | None) -> RotatedKey:
    """Revoke the key the caller used and issue a new one, in one transaction. Of two concurrent
    rotations of the same key one wins; the other raises ``KeyRevoked``."""
    async with db.tx() as s:
        gone = (
            await s.execute(
                update(ApiKey)
                .where(ApiKey.id == owner.key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=func.now())
                .returning(ApiKey.id)
            )
        ).scalar_one_or_none()
        if gone is None:
            raise KeyRevoked("this key was revoked meanwhile")
        key = await _add_key(s, owner.user_id)
        prefix = key.split("_")[1]
        s.add(
            AccountEvent(
                user_id=owner.user_id,
                kind="key.rotated",
                method=method,
                path=path,
                ip=ip,
                data={"revoked_prefix": owner.prefix, "new_prefix": prefix},
            )
        )
        return RotatedKey(key, prefix, owner.prefix)


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


QUOTA_FIELDS = ("tokens_per_day", "concurrent_jobs", "words_per_month")


async def set_quotas(db: Database, name: str, changes: dict[str, int | None]) -> Quotas:
    """Change some of a user's quotas (None: no limit); returns all of them. Recorded in the account log."""
    async with db.tx() as s:
        uid = await _user_id(s, name)
        user = (await s.execute(select(User).where(User.id == uid).with_for_update())).scalar_one()
        for k, v in changes.items():
            if k not in QUOTA_FIELDS:
                raise ValueError(f"no quota {k!r}")
            setattr(user, f"quota_{k}", v)
        if changes:
            s.add(AccountEvent(user_id=uid, kind="quota.set", data={**changes, "by": "admin"}))
        return Quotas(user.quota_tokens_per_day, user.quota_concurrent_jobs, user.quota_words_per_month)
