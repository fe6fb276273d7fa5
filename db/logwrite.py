"""Appending events to a job's log: chained (``core.eventformat.event_hash``) under the job row's
lock, added to its Merkle tree (the frontier on the job row, the interior nodes in
``audit_nodes``), and signed as a checkpoint when one is due (``db.signer``). The audited
transaction (``db.session.Database.job_tx``) calls it with the events of each write."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import structlog
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core import checkpoint
from core.errors import JobGone
from core.eventformat import CHAIN_VERSION, event_hash
from core.merkle import Frontier, Node, leaf_entry, leaf_hash
from core.spec import TERMINAL_STATUSES
from db import logtree
from db.signer import Refusal, Signed, Signer, sign

log = structlog.get_logger(__name__)


async def write_events(
    session: AsyncSession,
    job_id: uuid.UUID,
    events: list[dict[str, Any]],
    signer: Signer | None = None,
    *,
    lead: bool = False,
    download: bool = False,
    alarms: list[Refusal] | None = None,
) -> int | None:
    """Append ``events`` to the job's log, chained and in its Merkle tree, with a signed checkpoint
    when one is due (``signer``, db.signer); returns the seq of the last (None when there are none).
    ``lead``: ``events[0]`` is a step's start, and every other event names its seq (activity_seq).
    ``download``: a download's write (its checkpoint says so). ``alarms`` collects refusals.
    The ``job`` event of the job's new terminal status is marked ``terminal``; once the job has
    ended, every write signs a checkpoint that says so (``end``), so a log cut short shows it."""
    if not events:
        return None
    # The row lock taken here is held to commit: concurrent writers of one job commit in seq order,
    # and each writer's events follow the head the one before it left. One lock, one UPDATE, then
    # the inserts: an UPDATE of the row after rows referencing it were inserted (their foreign keys
    # lock it FOR KEY SHARE) would have to queue behind any waiter for the row (a resume, a
    # cancel), who waits for this transaction: a deadlock.
    row = (
        await session.execute(
            text(
                "SELECT audit_seq, audit_head, audit_frontier, audit_signed, status, audit_end, audit_alarm"
                " FROM jobs WHERE id = :id FOR NO KEY UPDATE"
            ),
            {"id": job_id},
        )
    ).one_or_none()
    if row is None:
        raise JobGone(str(job_id))
    first, head, stored, signed = int(row[0]) + 1, str(row[1]), row[2], int(row[3])
    status, end, alarm = str(row[4]), row[5], row[6]
    ended = status in TERMINAL_STATUSES
    if not ended:
        end = None  # running again (a resume): its next end is marked anew
    tree = await _frontier(session, job_id, first - 1, stored)
    nodes: dict[Node, bytes] = {}  # the interior nodes this write completes (stored with its events)
    leaves: dict[Node, bytes] = {}  # its leaves' hashes (level 0: read from the events, once stored)
    rows: list[dict[str, Any]] = []

    def append(batch: list[dict[str, Any]]) -> None:
        nonlocal head, end
        for ev in batch:
            seq = first + len(rows)
            if lead and rows:
                ev = dict(ev, data={**ev["data"], "activity_seq": first})
            if ended and end is None and ev["kind"] == "job" and ev["action"] == status:
                ev, end = dict(ev, data={**ev["data"], "terminal": True}), seq
            r = dict(ev, job_id=job_id, seq=seq, prev_hash=head, chain=CHAIN_VERSION)
            head = r["hash"] = event_hash(head, r)
            nodes.update(tree.append(leaf_entry(head)))
            leaves[(0, seq - 1)] = leaf_hash(leaf_entry(head))
            rows.append(r)

    append(events)
    last = first + len(rows) - 1
    outcome: Signed | Refusal | None = None
    due = signer is not None and (ended or download or checkpoint.due(events, last - signed, signer.every))
    if signer is not None and alarm is None and due:
        fresh = {**leaves, **nodes}
        outcome = await sign(signer, session, job_id, last, tree.root(), fresh, end=end, download=download)
        if isinstance(outcome, Refusal):
            alarm = outcome.reason
            append([_alarm_event(outcome)])
            if alarms is not None:
                alarms.append(outcome)
        else:
            signed = last
    elif due:
        log.warning("audit.unsigned", job_id=str(job_id), seq=last, alarm=alarm)
    await session.execute(
        text(
            "UPDATE jobs SET audit_seq = :seq, audit_head = :h, audit_frontier = :f, audit_signed = :s,"
            " audit_end = :e, audit_alarm = :a WHERE id = :id"
        ),
        {"seq": rows[-1]["seq"], "h": head, "f": tree.to_text(), "s": signed, "e": end, "a": alarm, "id": job_id},
    )
    await _copy_events(session, rows)
    await logtree.write_nodes(session, job_id, nodes.items())
    if isinstance(outcome, Signed):
        session.add(outcome.row)
        if outcome.cosignatures:
            await session.flush()  # the checkpoint before the cosignatures that reference it
            session.add_all(outcome.cosignatures)
    return rows[-1]["seq"]


def _alarm_event(refusal: Refusal) -> dict[str, Any]:
    """The log's own record of a refused tree (a finished event, as ``AuditBuffer.finished`` makes)."""
    return {
        "ts": dt.datetime.now(dt.UTC),
        "kind": "error",
        "action": "audit_alarm",
        "table_name": None,
        "row_id": None,
        "sql_text": None,
        "data": refusal.as_event(),
    }


# The events go in by COPY on the transaction's own connection: one round trip, and none of the
# ORM's per-row work (this runs in every audited transaction). Not captured: it is the log itself.
_EVENT_COLUMNS = (
    "job_id",
    "seq",
    "ts",
    "kind",
    "action",
    "table_name",
    "row_id",
    "sql_text",
    "data",
    "prev_hash",
    "hash",
    "chain",
)
_COPY_EVENTS = f"COPY audit_events ({', '.join(_EVENT_COLUMNS)}) FROM STDIN"


async def _copy_events(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    async with raw.cursor() as cur, cur.copy(_COPY_EVENTS) as copy:
        for r in rows:
            await copy.write_row(tuple(Jsonb(r[c]) if c == "data" else r[c] for c in _EVENT_COLUMNS))


async def _frontier(session: AsyncSession, job_id: uuid.UUID, size: int, stored: str | None) -> Frontier:
    """The log's tree as the job row keeps it; for a log written before it was kept, rebuilt once
    from its hashes (the leaves)."""
    if stored is not None:
        return Frontier.from_text(size, stored)
    tree = Frontier()
    if size:
        hashes = await session.execute(
            text("SELECT hash FROM audit_events WHERE job_id = :j ORDER BY seq"), {"j": job_id}
        )
        tree.extend(leaf_entry(h) for (h,) in hashes)
    return tree
