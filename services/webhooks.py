"""A user's webhooks: their default target, their signing secret (made, rotated, shown once,
stored sealed) and the check of a job's target at submit.

The secret is stored sealed (``core.sealing``): a database dump, the audit log and the logs never
hold it in clear. It is opened only in memory, by the delivery activity, to sign. Each rotation
is recorded in the account log, without the secret.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import structlog
from sqlalchemy import select

from core.sealing import Sealer
from core.webhooks import WebhookPolicy, new_secret
from db.models import AccountEvent, User
from db.session import Database
from db.webhooks import check_target

log = structlog.get_logger(__name__)


class TargetRefused(ValueError):
    """A webhook target that may not be used (its form, its addresses, or no secret to sign with)."""


@dataclass(frozen=True)
class WebhookSettings:
    url: str | None
    secret_created_at: dt.datetime | None


async def settings_of(db: Database, user_id: int) -> WebhookSettings:
    async with db.tx() as s:
        row = (
            await s.execute(select(User.webhook_url, User.webhook_secret_created_at).where(User.id == user_id))
        ).one()
    return WebhookSettings(row[0], row[1])


async def rotate_secret(db: Database, user_id: int, sealer: Sealer, *, by: str, ip: str | None = None) -> str:
    """A new signing secret for the user, replacing the one before at once; returned only here."""
    secret = new_secret()
    async with db.tx() as s:
        user = (await s.execute(select(User).where(User.id == user_id).with_for_update())).scalar_one()
        first = user.webhook_secret_sealed is None
        user.webhook_secret_sealed = sealer.seal(secret)
        user.webhook_secret_created_at = dt.datetime.now(dt.UTC)
        s.add(
            AccountEvent(
                user_id=user_id,
                kind="webhook.secret_created" if first else "webhook.secret_rotated",
                ip=ip,
                data={"by": by},
            )
        )
    log.info("webhook.secret_rotated", user_id=user_id, first=first)
    return secret


async def check(url: str, policy: WebhookPolicy) -> None:
    """TargetRefused unless ``url`` may be a webhook target now (its form, and what its host resolves to)."""
    why, _ = await check_target(url, policy)
    if why is not None:
        raise TargetRefused(f"webhook URL refused: {why}")


async def set_default(
    db: Database, user_id: int, url: str | None, policy: WebhookPolicy, sealer: Sealer, *, ip: str | None = None
) -> str | None:
    """Set (or clear, with None) the user's default webhook; returns a new signing secret when
    the user had none yet (shown once), else None."""
    if url is not None:
        await check(url, policy)
    async with db.tx() as s:
        user = (await s.execute(select(User).where(User.id == user_id).with_for_update())).scalar_one()
        user.webhook_url = url
        needs_secret = url is not None and user.webhook_secret_sealed is None
        s.add(AccountEvent(user_id=user_id, kind="webhook.default_set", ip=ip, data={"url": url}))
    if needs_secret:
        return await rotate_secret(db, user_id, sealer, by="user", ip=ip)
    return None


async def job_target(db: Database, user_id: int, url: str | None, policy: WebhookPolicy) -> str | None:
    """The webhook of a new job: its own ``url``, else the user's default; checked now (a job's
    own URL is refused with TargetRefused; so is any target when the user has no secret to sign with)."""
    async with db.tx() as s:
        default, sealed = (
            await s.execute(select(User.webhook_url, User.webhook_secret_sealed).where(User.id == user_id))
        ).one()
    target = url or default
    if target is None:
        return None
    if sealed is None:
        raise TargetRefused(
            "no webhook signing secret yet: create one first (POST /v1/webhook/secret, or `quire webhook secret`)"
        )
    try:
        await check(target, policy)
    except TargetRefused as exc:
        raise TargetRefused(str(exc) if url else f"your default {exc}") from None
    return target
