"""Reading a job's audit log: keyset pages, whole-log downloads in constant memory (with the log's
signed checkpoints), JSON, NDJSON and TXT renderings, the facts a live stream needs to know when
the log is complete, verification of the log (its chain, its checkpoints, the job's head and the
rows it references), and Merkle proofs: of one event's inclusion, of one checkpoint's extending
another.

Reads made here are the viewer's, not the job's: they use unaudited transactions and are not
recorded in the job's log (a download is recorded as a user action by the route that serves it).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import select, text

from core import checkpoint, merkle
from core.chain import ChainVerifier, Verdict, check_reference
from core.checkpoint import VerifierKey
from core.eventformat import GENESIS, TXT_HEADER, parse_location, ts_text, txt_line
from core.logfile import CHECKPOINT_TXT
from core.spec import TERMINAL_STATUSES
from db import logtree
from db.models import AuditCheckpoint, AuditCosignature, AuditEvent, Base, Document, Job
from db.session import Database
from db.signer import probe
from db.witness import WitnessClient

BATCH = 500

COLUMNS = (
    AuditEvent.seq,
    AuditEvent.ts,
    AuditEvent.kind,
    AuditEvent.action,
    AuditEvent.table_name,
    AuditEvent.row_id,
    AuditEvent.sql_text,
    AuditEvent.data,
    AuditEvent.prev_hash,
    AuditEvent.hash,
    AuditEvent.chain,
    AuditEvent.job_id,
)


def event_row(r: Any) -> dict[str, Any]:
    return {
        "seq": r[0],
        "ts": ts_text(r[1]),
        "kind": r[2],
        "action": r[3],
        "table_name": r[4],
        "row_id": r[5],
        "sql_text": r[6],
        "data": r[7],
        "chain": r[10],
        "job_id": str(r[11]),
        "prev_hash": r[8],
        "hash": r[9],
    }


async def read_events(
    db: Database,
    job_id: uuid.UUID,
    after: int,
    limit: int,
    kinds: list[str] | None = None,
    up_to: int | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` events with seq > ``after`` (and <= ``up_to``), in seq order (one keyset
    page: an index range)."""
    q = select(*COLUMNS).where(AuditEvent.job_id == job_id, AuditEvent.seq > after)
    if up_to is not None:
        q = q.where(AuditEvent.seq <= up_to)
    if kinds:
        q = q.where(AuditEvent.kind.in_(kinds))
    async with db.tx() as s:
        rows = (await s.execute(q.order_by(AuditEvent.seq).limit(limit))).all()
    return [event_row(r) for r in rows]


async def iter_batches(
    db: Database,
    job_id: uuid.UUID,
    after: int,
    limit: int | None,
    kinds: list[str] | None = None,
    up_to: int | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Events in seq order, in keyset batches of at most BATCH, each read in its own short
    transaction: memory stays flat for any log size and no connection is held between batches."""
    sent = 0
    while limit is None or sent < limit:
        n = BATCH if limit is None else min(BATCH, limit - sent)
        batch = await read_events(db, job_id, after, n, kinds, up_to)
        if batch:
            yield batch
        sent += len(batch)
        if len(batch) < n:
            return
        after = batch[-1]["seq"]


async def iter_events(
    db: Database, job_id: uuid.UUID, after: int, limit: int | None, kinds: list[str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    async for batch in iter_batches(db, job_id, after, limit, kinds):
        for e in batch:
            yield e


def _dumps(e: dict[str, Any]) -> str:
    return json.dumps(e, ensure_ascii=False)


async def render(
    db: Database,
    job_id: uuid.UUID,
    after: int,
    limit: int | None,
    fmt: str,
    kinds: list[str] | None = None,
    up_to: int | None = None,
) -> AsyncIterator[str]:
    """A log (or a page of it) as JSON, NDJSON or TXT text, one piece per batch of events. A whole
    log ends with its signed checkpoints (those within what was sent, with their witnesses'
    cosignatures). ``up_to``: the last seq to send (a download ends at its own checkpoint)."""
    whole = after == 0 and limit is None and not kinds
    batches = iter_batches(db, job_id, after, limit, kinds, up_to)
    last_seq = after
    if fmt == "ndjson":
        async for batch in batches:
            last_seq = batch[-1]["seq"]
            yield "".join(_dumps(e) + "\n" for e in batch)
        if whole:
            yield "".join(_dumps({"checkpoint": c["note"]}) + "\n" for c in await checkpoints(db, job_id, last_seq))
    elif fmt == "txt":
        yield TXT_HEADER
        async for batch in batches:
            last_seq = batch[-1]["seq"]
            yield "".join(txt_line(e) for e in batch)
        if whole:
            notes = await checkpoints(db, job_id, last_seq)
            yield "".join(f"{CHECKPOINT_TXT}{json.dumps(c['note'])}\n" for c in notes)
    else:
        yield f'{{"job_id":"{job_id}","events":['
        sep, count, head = "", 0, None
        async for batch in batches:
            yield sep + ",".join(_dumps(e) for e in batch)
            sep, last_seq, count, head = ",", batch[-1]["seq"], count + len(batch), batch[-1]["hash"]
        more = limit is not None and count == limit
        # The head of what was sent: the hash of its last event (GENESIS for an empty log). A log
        # filtered by kind is no chain, so it states none.
        if head is None and after == 0:
            head = GENESIS
        tail = f',"head_seq":{last_seq},"head_hash":"{head}"' if head is not None and not kinds else ""
        if whole:
            tail += ',"checkpoints":' + json.dumps(await checkpoints(db, job_id, last_seq))
        yield f'],"next_after":{last_seq if more else "null"}{tail}}}'


async def checkpoints(db: Database, job_id: uuid.UUID, up_to: int | None = None) -> list[dict[str, Any]]:
    """The log's signed checkpoints (up to tree size ``up_to``), oldest first, each note with the
    cosignature lines its witnesses gave (C2SP tlog-cosignature) after the operator's signature."""
    q = select(AuditCheckpoint).where(AuditCheckpoint.job_id == job_id)
    c = select(AuditCosignature.tree_size, AuditCosignature.line).where(AuditCosignature.job_id == job_id)
    if up_to is not None:
        q, c = q.where(AuditCheckpoint.tree_size <= up_to), c.where(AuditCosignature.tree_size <= up_to)
    async with db.tx() as s:
        rows = (await s.execute(q.order_by(AuditCheckpoint.tree_size))).scalars().all()
        lines: dict[int, list[str]] = {}
        for size, line in (await s.execute(c.order_by(AuditCosignature.id))).all():
            lines.setdefault(size, []).append(line + "\n")
    return [
        {
            "tree_size": c.tree_size,
            "root": c.root,
            "key_id": c.key_id,
            "ts": ts_text(c.ts),
            "prev_size": c.prev_size,
            "note": checkpoint.with_cosignatures(c.note, lines.get(c.tree_size, [])),
        }
        for c in rows
    ]


class NoCheckpoint(LookupError):
    """No signed checkpoint covers what a proof was asked for (yet)."""


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


async def inclusion(db: Database, job_id: uuid.UUID, seq: int) -> dict[str, Any]:
    """The proof that event ``seq`` is in the log, against the log's latest signed checkpoint: the
    event, the checkpoint (its note) and the RFC 9162 inclusion proof (``leaf_index`` = seq - 1,
    the path in base64), read from O(log n) stored nodes. ``quire audit verify --proof`` checks it
    with the operator's public key alone."""
    notes = await checkpoints(db, job_id)
    if not notes or notes[-1]["tree_size"] < seq:
        raise NoCheckpoint(f"no signed checkpoint covers seq {seq} yet: one is signed when the step it is in ends")
    cp = notes[-1]
    event = (await read_events(db, job_id, seq - 1, 1))[0]
    async with db.tx() as s:
        path = await logtree.inclusion_proof(s, job_id, seq - 1, cp["tree_size"])
    return {
        "type": "inclusion",
        "job_id": str(job_id),
        "seq": seq,
        "event": event,
        "tree_size": cp["tree_size"],
        "checkpoint": cp["note"],
        "proof": {"leaf_index": seq - 1, "tree_size": cp["tree_size"], "inclusion_path": _b64(path)},
    }


async def consistency(db: Database, job_id: uuid.UUID, old_size: int, new_size: int) -> dict[str, Any]:
    """The RFC 9162 proof that the checkpoint at ``new_size`` extends the one at ``old_size`` (both
    signed), read from O(log n) stored nodes."""
    notes = {c["tree_size"]: c["note"] for c in await checkpoints(db, job_id)}
    for size in (old_size, new_size):
        if size not in notes:
            raise NoCheckpoint(f"no signed checkpoint at tree size {size}")
    async with db.tx() as s:
        path = await logtree.consistency_proof(s, job_id, old_size, new_size)
    return {
        "type": "consistency",
        "job_id": str(job_id),
        "old": notes[old_size],
        "new": notes[new_size],
        "proof": {"tree_size_1": old_size, "tree_size_2": new_size, "consistency_path": _b64(path)},
    }


async def job_status(db: Database, job_id: uuid.UUID) -> str | None:
    async with db.tx() as s:
        return (await s.execute(select(Job.status).where(Job.id == job_id))).scalar_one_or_none()


async def open_activities(db: Database, job_id: uuid.UUID) -> int:
    """Activity attempts the log shows started but not yet ended (each writes its end or error)."""
    q = text(
        "SELECT count(*) FILTER (WHERE action = 'start') - count(*) FILTER (WHERE action IN ('end', 'error'))"
        " FROM audit_events WHERE job_id = :j AND kind = 'activity'"
    )
    async with db.tx() as s:
        return int((await s.execute(q, {"j": job_id})).scalar_one())


async def verify(
    db: Database,
    job_id: uuid.UUID,
    keys: list[VerifierKey] | None = None,
    witnesses: list[VerifierKey] | None = None,
    ask: Sequence[WitnessClient] | None = None,
) -> Verdict | None:
    """The job's log checked from the database: the chain from seq 1 (as this job's), its signed
    checkpoints (signatures too, given ``keys``; cosignatures of ``witnesses`` on the last), the
    head on the job row, the heads its documents recorded, the current value of every row the log
    references, the alarm a refused checkpoint left, and the last checkpoint against what each
    witness holds (``ask``; default: the database's signer's witnesses). None if there is no such job."""
    async with db.tx() as s:
        job = (
            await s.execute(select(Job.audit_seq, Job.audit_head, Job.status, Job.audit_alarm).where(Job.id == job_id))
        ).one_or_none()
        docs = (
            await s.execute(
                select(Document.audit_seq, Document.audit_head).where(
                    Document.job_id == job_id, Document.audit_head.is_not(None)
                )
            )
        ).all()
    if job is None:
        return None
    notes = [c["note"] for c in await checkpoints(db, job_id, int(job[0]))]
    v = ChainVerifier(
        job_id=str(job_id),
        checkpoints=notes,
        keys=keys,
        witnesses=witnesses,
        anchors={int(d[0]): str(d[1]) for d in docs if d[0] is not None},
    )
    async for batch in iter_batches(db, job_id, 0, None, up_to=int(job[0])):  # the log as of the head read
        for e in batch:
            v.feed(e)
    verdict = v.verdict(int(job[0]), str(job[1]))
    verdict.alarm = job[3]
    problems = [(verdict.first_bad_seq, verdict.reason)] if verdict.first_bad_seq is not None else []
    refs = v.references_to_check()
    stored = await _stored_values(db, job_id, list(refs))
    for loc, ref in refs.items():
        exists = loc in stored
        verdict.references_checked += int(exists)
        verdict.references_gone += int(not exists)
        bad = check_reference(loc, ref, stored.get(loc), exists)
        if bad is not None:
            problems.append(bad)
    if job[3] is not None:
        problems.append((int(job[0]), f"a checkpoint of this log was refused, an alarm: {job[3]}"))
    if ask is None:
        ask = db.signer.witnesses if db.signer is not None else ()
    if notes and ask:
        problems += await _witnessed(db, job_id, notes[-1], ask, verdict, keys)
    if verdict.partial is not None and job[2] in TERMINAL_STATUSES and verdict.end_seq is None:
        verdict.partial = f"the job has {job[2]}, but its log does not say so: {verdict.partial}"
    if problems:
        seq, reason = min(problems, key=lambda p: p[0] or 0)
        verdict.intact, verdict.first_bad_seq, verdict.reason = False, seq, reason
        verdict.complete, verdict.partial = False, None
    return verdict


async def _witnessed(
    db: Database,
    job_id: uuid.UUID,
    note: str,
    ask: Sequence[WitnessClient],
    verdict: Verdict,
    keys: list[VerifierKey] | None,
) -> list[tuple[int, str]]:
    """The log's last checkpoint (``note``) against what each witness holds. A witness holding a
    larger tree than the log verified may have seen a write committed since: then the database's
    newer checkpoint (signed, and proved to extend the one verified) is put to it instead, and
    the first answer stands unless the witness vouches for that one."""
    verified = cp = checkpoint.parse(note)
    async with db.tx() as s:
        answers = await probe(ask, s, job_id, note)
        for _ in range(2):
            ahead = {a.witness for a in answers if a.kind == "refused" and (a.size or 0) > cp.size}
            newer = (await checkpoints(db, job_id))[-1]["note"] if ahead else None
            if newer is None:
                break
            try:
                later = checkpoint.verify(newer, keys) if keys else checkpoint.parse(newer)
            except checkpoint.CheckpointError:
                break
            if later.size <= cp.size:
                break
            try:
                path = await logtree.consistency_proof(s, job_id, verified.size, later.size)
                merkle.verify_consistency(verified.size, verified.root, later.size, later.root, path)
            except (merkle.ProofError, KeyError) as exc:
                return [(cp.size, f"the log's checkpoint at {later.size} does not extend the one verified: {exc}")]
            retry = await probe(ask, s, job_id, newer)
            if not all(a.kind == "cosigned" for a in retry if a.witness in ahead):
                break
            answers, cp = retry, later
    out = []
    for a in answers:
        verdict.witness_answers[a.witness] = a.kind if a.why is None else f"{a.kind}: {a.why}"
        if a.kind == "refused":
            out.append((cp.size, f"the witness {a.witness} refuses the log's last checkpoint: {a.why}"))
    return out


async def _stored_values(db: Database, job_id: uuid.UUID, locations: list[str]) -> dict[str, Any]:
    """The values now at these ``table.column#id`` locations of this job (absent: no such row),
    read a column at a time in batches. Tables and columns must be Quire's: a log is data, not SQL."""
    wanted: dict[tuple[str, str], dict[Any, str]] = {}
    for loc in locations:
        parsed = parse_location(loc)
        table = Base.metadata.tables.get(parsed[0]) if parsed else None
        if parsed is None or table is None or parsed[1] not in table.c or "id" not in table.c:
            continue
        key = _row_key(table.name, parsed[2], job_id)
        if key is not None:
            wanted.setdefault((parsed[0], parsed[1]), {})[key] = loc
    out: dict[str, Any] = {}
    async with db.tx() as s:
        for (name, column), ids in wanted.items():
            table = Base.metadata.tables[name]
            keys = list(ids)
            for i in range(0, len(keys), BATCH):
                q = select(table.c.id, table.c[column]).where(table.c.id.in_(keys[i : i + BATCH]))
                if "job_id" in table.c:
                    q = q.where(table.c.job_id == job_id)
                for row_id, value in (await s.execute(q)).all():
                    out[ids[row_id]] = value
    return out


def _row_key(table: str, row_id: str, job_id: uuid.UUID) -> Any:
    """The primary key a location names, if it can be a row of this job."""
    if table == "jobs":
        return job_id if row_id == str(job_id) else None
    try:
        return int(row_id)
    except ValueError:
        return None
