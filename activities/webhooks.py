"""Webhook delivery: one attempt per activity run, retried by Temporal on its own schedule
(``workflows/webhook.py``). Each attempt is an audit event of the job (``webhook`` kind: status
code, latency, error) besides the activity events the interceptor writes.

The target is checked again at every attempt (DNS can change since submit) and the request goes
to the very address that was checked (the URL's host stays in ``Host`` and TLS's SNI, so the
certificate is verified against it): a name that resolves to a public address for the check and
to a private one for the connection cannot slip through. No proxy from the environment, no
redirects. Signed per Standard Webhooks with the job owner's secret, opened only here, in memory.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook
from temporalio import activity

from activities.base import Step, load_job
from core.continuity import brief
from core.errors import WebhookRefused
from core.sealing import Sealer, SealError
from core.webhooks import IPAddress, WebhookPolicy, delivery_error, event_type, job_event, message_id
from db.counts import coherence_counts, word_account
from db.models import AuditCheckpoint, Document, LlmCall, User
from db.session import Database
from db.webhooks import check_target

log = structlog.get_logger(__name__)
USER_AGENT = "Quire-Webhooks/1"


class WebhookFailed(Exception):
    """The attempt failed (no answer, or not 2xx): Temporal retries it on the delivery schedule."""


@dataclass(frozen=True)
class WebhookConfig:
    policy: WebhookPolicy
    sealer: Sealer | None  # None: no key to open secrets with; deliveries are refused
    public_url: str  # the API's URL, for the event's links
    timeout_s: float = 10.0
    # The operator's witness (QUIRE_WITNESS_URL, QUIRE_WITNESS_SECRET): each job's last checkpoint
    # is POSTed there, signed like a webhook. The operator's own URL: no target policy applies.
    witness_url: str | None = None
    witness_secret: str | None = None


@dataclass
class DeliveryRef:
    job_id: str
    attempts: int  # of the schedule: the last one says so in its event


def pinned(url: str, ip: IPAddress) -> tuple[str, dict[str, str], dict[str, str]]:
    """(the URL with ``ip`` as its host, the Host header, request extensions (TLS's SNI))."""
    parts = urlsplit(url)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{host}:{parts.port}" if parts.port else host
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": parts.hostname or ""} if parts.scheme == "https" else {}
    return target, {"Host": host_header}, extensions


class WebhookActivities(Step):
    def __init__(self, db: Database, config: WebhookConfig) -> None:
        super().__init__(db)
        self.config = config

    @activity.defn(name="deliver_webhook")
    async def deliver(self, inp: DeliveryRef) -> int:
        """POST the job's end to its webhook once; the HTTP status (2xx) when delivered."""
        jid = uuid.UUID(inp.job_id)
        attempt = activity.info().attempt
        async with self.db.job_tx(jid) as tx:
            job = await load_job(tx, jid, allow_terminal=True)
            url = job.webhook_url
            sealed = (
                await tx.session.execute(select(User.webhook_secret_sealed).where(User.id == job.user_id))
            ).scalar_one_or_none()
            words = (
                await tx.session.execute(
                    select(Document.word_count)
                    .where(Document.job_id == jid, Document.role.in_(("output", "partial")))
                    .order_by((Document.role == "output").desc(), Document.version.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            cost = (
                await tx.session.execute(select(func.sum(LlmCall.cost_micro_usd)).where(LlmCall.job_id == jid))
            ).scalar_one()
            report = brief(await coherence_counts(tx.session, jid, words or job.words_written))
            account = (await word_account(tx.session, jid)).as_dict()
            body = json.dumps(
                job_event(job, words, None if cost is None else int(cost), self.config.public_url, account, report),
                separators=(",", ":"),
                ensure_ascii=False,
            )
            kind = event_type(job.status)
        if url is None:
            return 0
        base = {"webhook_id": message_id(inp.job_id), "event": kind, "url": url, "attempt": attempt}
        secret = self._secret(sealed)
        why, addresses = await check_target(url, self.config.policy)
        if secret is None or why is not None:
            why = why or "no signing secret can be opened (none set, or QUIRE_SECRET_KEY changed)"
            await self._record(jid, "refused", {**base, "error": f"refused: {why}", "final": True})
            raise WebhookRefused(why)
        status, error, ms = await self._post(url, addresses[0], base["webhook_id"], body, secret)
        ok = status is not None and 200 <= status < 300
        await self._record(
            jid,
            "delivered" if ok else "failed",
            {
                **base,
                "address": str(addresses[0]),
                "status_code": status,
                "latency_ms": ms,
                "error": error,
                "final": ok or attempt >= inp.attempts,  # no attempt follows this one
            },
        )
        if not ok:
            raise WebhookFailed(error or f"HTTP {status}")
        return int(status or 0)

    @activity.defn(name="witness_checkpoint")
    async def witness(self, inp: DeliveryRef) -> int:
        """POST the job's latest signed checkpoint to the operator's witness once; the HTTP status.
        A witness keeps what it was sent: a log rewritten later no longer matches what it holds."""
        jid = uuid.UUID(inp.job_id)
        url, secret = self.config.witness_url, self.config.witness_secret
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid, allow_terminal=True)
            cp = (
                await tx.session.execute(
                    select(AuditCheckpoint)
                    .where(AuditCheckpoint.job_id == jid)
                    .order_by(AuditCheckpoint.tree_size.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        if url is None or secret is None or cp is None:
            why = "no witness configured" if url is None or secret is None else "the log has no checkpoint yet"
            await self._record(jid, "witness_skipped", {"reason": why})
            return 0
        body = json.dumps(
            {
                "type": "audit.checkpoint",
                "timestamp": cp.ts.isoformat(),
                "data": {"job_id": inp.job_id, "tree_size": cp.tree_size, "root": cp.root, "key_id": cp.key_id,
                         "note": cp.note},
            },
            separators=(",", ":"),
        )  # fmt: skip
        msg_id = f"msg_cp_{inp.job_id.replace('-', '')}_{cp.tree_size}"
        attempt = activity.info().attempt
        status, error, ms = await self._post(url, None, msg_id, body, secret)
        ok = status is not None and 200 <= status < 300
        await self._record(
            jid,
            "witnessed" if ok else "witness_failed",
            {"tree_size": cp.tree_size, "root": cp.root, "status_code": status, "latency_ms": ms, "error": error,
             "attempt": attempt, "final": ok or attempt >= inp.attempts},
        )  # fmt: skip
        if not ok:
            raise WebhookFailed(error or f"HTTP {status}")
        return int(status or 0)

    def _secret(self, sealed: str | None) -> str | None:
        if sealed is None or self.config.sealer is None:
            return None
        try:
            return self.config.sealer.open(sealed)
        except SealError:
            return None

    async def _post(
        self, url: str, ip: IPAddress | None, msg_id: str, body: str, secret: str
    ) -> tuple[int | None, str | None, float]:
        """(HTTP status or None, error or None, latency ms) of one signed POST to ``ip`` (None: to
        ``url`` as it is, the operator's witness, whose URL no user chose)."""
        now = dt.datetime.now(dt.UTC)
        target, host, extensions = pinned(url, ip) if ip is not None else (url, {}, {})
        headers = {
            **host,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        }
        t0 = time.perf_counter()
        try:
            # trust_env=False: no proxy from the environment (it would connect elsewhere than checked).
            async with httpx.AsyncClient(timeout=self.config.timeout_s, trust_env=False) as http:
                r = await http.post(target, content=body.encode("utf-8"), headers=headers, extensions=extensions)
            status, error = r.status_code, delivery_error(None, r.status_code)
        except httpx.HTTPError as exc:  # the log line (the operator's) keeps the raw error; the job's log a class
            status, error = None, delivery_error(exc, None)
            log.info("webhook.error", host=urlsplit(url).hostname, error=f"{type(exc).__name__}: {exc}")
        ms = round((time.perf_counter() - t0) * 1000, 1)
        log.info("webhook.attempt", host=urlsplit(url).hostname, status=status, ms=ms, error=error)
        return status, error, ms

    async def _record(self, jid: uuid.UUID, action: str, data: dict[str, object]) -> None:
        async with self.db.job_tx(jid) as tx:
            tx.event("webhook", action, data)
