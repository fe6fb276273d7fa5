"""User actions on a job, recorded in the job's own audit log as they happen: who (user name and
id), from where (IP, user agent) and through which request; the event's ts is when.

The account log (``account_events``) keeps every request of every user; a job's log keeps the
actions taken on that job: cancel requests, downloads of its output and log, views of its page.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from api.deps import Caller
from db.models import Job
from db.session import Database
from services.jobs import record_user_action


def actor(request: Request, who: Caller) -> dict[str, Any]:
    """Who acts, from where, through which request: what every user event of a job carries."""
    return {
        "user": who.name,
        "user_id": who.user_id,
        "ip": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent"),
        "method": request.method,
        "path": request.url.path,
    }


async def record(
    request: Request, db: Database, who: Caller, job: Job, action: str, *, download: bool = False, **data: Any
) -> int | None:
    """The action in the job's log; its seq (None: the job is gone)."""
    return await record_user_action(db, job.id, action, {**actor(request, who), **data}, download=download)
