"""/v1 routes of the caller's account beyond keys: their webhook (default target, signing secret)
and their usage (quotas, what is used of them, cost)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response

from api.deps import CallerDep, DbDep, SettingsDep
from api.intake import invalid
from api.jobs import cost
from api.schemas import COMMON, ERRORS, QuotaView, UsageView, WebhookSecret, WebhookSet, WebhookUpdate, WebhookView
from core.sealing import Sealer
from db import usage
from services import views
from services import webhooks as webhook_service

router = APIRouter(prefix="/v1", tags=["account"], responses=COMMON)
NO_STORE = {"Cache-Control": "no-store"}  # a response that shows a secret is never cached


def _sealer(request: Request) -> Sealer:
    return request.app.state.sealer  # type: ignore[no-any-return]


SealerDep = Annotated[Sealer, Depends(_sealer)]


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _view(db: DbDep, user_id: int) -> WebhookView:
    w = await webhook_service.settings_of(db, user_id)
    created = w.secret_created_at.isoformat() if w.secret_created_at else None
    return WebhookView(url=w.url, secret_set=created is not None, secret_created_at=created)


@router.get("/webhook", response_model=WebhookView, summary="Your default webhook and whether a secret is set")
async def get_webhook(who: CallerDep, db: DbDep) -> WebhookView:
    return await _view(db, who.user_id)


@router.put(
    "/webhook",
    response_model=WebhookSet,
    summary="Set (or clear, with null) the default webhook of your jobs",
    description="Checked as a job's webhook_url is: an http(s) URL whose host resolves only to allowed "
    "addresses. The first time, a signing secret is made and returned here (only here).",
    responses={422: ERRORS[422]},
)
async def put_webhook(
    request: Request,
    response: Response,
    who: CallerDep,
    db: DbDep,
    settings: SettingsDep,
    sealer: SealerDep,
    body: Annotated[WebhookUpdate, Body()],
) -> WebhookSet:
    try:
        secret = await webhook_service.set_default(
            db, who.user_id, body.url, settings.webhook_policy, sealer, ip=_ip(request)
        )
    except webhook_service.TargetRefused as exc:
        raise invalid(["body", "url"], str(exc), "webhook_url") from None
    response.headers.update(NO_STORE)
    return WebhookSet(**(await _view(db, who.user_id)).model_dump(), secret=secret)


@router.post(
    "/webhook/secret",
    status_code=201,
    response_model=WebhookSecret,
    summary="Make a new webhook signing secret (the one before stops signing at once)",
    description="The secret (`whsec_...`, Standard Webhooks) is shown in this response only: Quire keeps it "
    "sealed, to sign with. Recorded in the account log, without the secret.",
)
async def rotate_webhook_secret(
    request: Request, response: Response, who: CallerDep, db: DbDep, sealer: SealerDep
) -> WebhookSecret:
    secret = await webhook_service.rotate_secret(db, who.user_id, sealer, by="user", ip=_ip(request))
    response.headers.update(NO_STORE)
    return WebhookSecret(secret=secret, created_at=dt.datetime.now(dt.UTC).isoformat())


@router.get("/usage", response_model=UsageView, summary="Your quotas, what you have used of them, and your cost")
async def get_usage(who: CallerDep, db: DbDep) -> UsageView:
    now = dt.datetime.now(dt.UTC)
    async with db.tx() as s:
        q = await usage.quotas(s, who.user_id)
        u = await usage.usage(s, who.user_id, now)
    return UsageView(
        quotas=QuotaView(
            tokens_per_day=q.tokens_per_day, concurrent_jobs=q.concurrent_jobs, words_per_month=q.words_per_month
        ),
        tokens_today=u.tokens_today,
        running_jobs=u.running_jobs,
        words_this_month=u.words_this_month,
        cost=cost(await views.user_costs(db, who.user_id)),
    )
