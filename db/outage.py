"""What counts as an outage of Quire's own infrastructure (the database, the network, Temporal
unavailable), retried through a long window, rather than an error of the step."""

from __future__ import annotations

import psycopg
from sqlalchemy import exc as sa_exc
from temporalio.service import RPCError, RPCStatusCode

from core.errors import BudgetExhausted, ContinuityBroken, JobGone, JobNotRunnable, LlmUnavailable
from core.quota import QuotaExceeded

# The database being down, not a statement being wrong: a lost, refused or timed-out connection, a
# deadlock or a server shutting down (every DB-API OperationalError), a full pool, the network.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage of Quire's own infrastructure (the database, the network,
    Temporal unavailable: retried through a long window) rather than an error of the step (retried
    a few times, then the job fails).

    A model endpoint that keeps failing (``LlmUnavailable``) is not: its client has already retried
    every call, each retry is a recorded, paid-for request, and an endpoint that stays down (a wrong
    URL, a revoked key, a removed model) is a fault the user must see and fix (then ``quire resume``).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(
            e, LlmUnavailable | BudgetExhausted | QuotaExceeded | JobGone | JobNotRunnable | ContinuityBroken
        ):
            return False
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, OUTAGE_ERRORS):
            return True
        if isinstance(e, RPCError) and e.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return True
        e = e.__cause__ or e.__context__
    return False
