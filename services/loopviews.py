"""Reading the author's loop: the plan and its versions, a node's text and history, the edits of a
job (who changed what), the document's versions and the diff between two, and the book as a map
(chapters as tiles in plan order with their state, words against budget, findings, and when each
was written). The viewer's reads, unaudited (what they change is audited where it is changed)."""

from __future__ import annotations

import datetime as dt
import difflib
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from core.edits import node_text
from core.spec import JobOptions
from db.loop import Edit, PlanVersion
from db.manuscript import Chunk, ChunkVersion, ContinuityFinding, PlanNode
from db.models import Document, Job, LlmCall
from db.session import Database
from db.tree import chunks_under, latest_text, lock_over, outline


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


async def plan(db: Database, job: Job) -> dict[str, Any]:
    """The outline (top-level nodes) as it stands, whether it waits for review, and its versions."""
    async with db.tx() as s:
        items = await outline(s, job.id)
        versions = (
            (await s.execute(select(PlanVersion).where(PlanVersion.job_id == job.id).order_by(PlanVersion.version)))
            .scalars()
            .all()
        )
    approved = any(v.status == "approved" for v in versions)
    return {
        "job_id": str(job.id),
        "review_plan": JobOptions(**(job.params or {})).review_plan,
        "awaiting_review": job.status == "running" and bool(versions) and not approved
        and versions[-1].status in ("planned", "rejected"),
        "target_words": job.target_words,
        "max_words": job.max_words,
        "items": items,
        "versions": [
            {
                "version": v.version,
                "status": v.status,
                "by": v.user_name,
                "changes": v.changes,
                "reason": v.reason,
                "created_at": _iso(v.created_at),
                "decided_at": _iso(v.decided_at),
            }
            for v in versions
        ],
    }  # fmt: skip


def edit_view(e: Edit) -> dict[str, Any]:
    return {
        "number": e.number,
        "kind": e.kind,
        "node": e.node_id,
        "by": e.user_name,
        "status": e.status,
        "instruction": (e.params or {}).get("instruction"),
        "selection": (e.params or {}).get("selected"),
        "to": (e.params or {}).get("to"),
        "document_version": e.document_version,
        "chunks": len((e.detail or {}).get("after", {})),
        "flagged": (e.detail or {}).get("flagged", 0),
        "llm_calls": (e.detail or {}).get("llm_calls"),
        "tokens_in": (e.detail or {}).get("tokens_in"),
        "tokens_out": (e.detail or {}).get("tokens_out"),
        "error_code": e.error_code,
        "reason": e.reason,
        "created_at": _iso(e.created_at),
        "completed_at": _iso(e.completed_at),
        "workflow_id": e.workflow_id,
    }


async def edits(db: Database, job: Job, node: int | None = None) -> list[dict[str, Any]]:
    """Who changed what, oldest first (with ``node``: the edits that changed that node)."""
    async with db.tx() as s:
        rows = (await s.execute(select(Edit).where(Edit.job_id == job.id).order_by(Edit.number))).scalars().all()
        if node is not None:
            n = await s.get(PlanNode, node)
            ids = {str(c.id) for c in await chunks_under(s, n)} if n is not None else set()
            rows = [e for e in rows if e.node_id == node or ids & set((e.detail or {}).get("after", {}))]
    return [edit_view(e) for e in rows]


async def edit(db: Database, job: Job, number: int) -> dict[str, Any] | None:
    async with db.tx() as s:
        e = (await s.execute(select(Edit).where(Edit.job_id == job.id, Edit.number == number))).scalar_one_or_none()
    return edit_view(e) if e is not None else None


async def node(db: Database, job: Job, node_id: int) -> dict[str, Any] | None:
    """A node: its text as its author edits it (its chunks' latest versions), its words against its
    budget, its lock, and the versions it can be rolled back to."""
    async with db.tx() as s:
        n = await s.get(PlanNode, node_id)
        if n is None or n.job_id != job.id or n.level == "book":
            return None
        chunks = await chunks_under(s, n)
        texts = [await latest_text(s, c.id) for c in chunks]
        lock = await lock_over(s, n)
    history = await edits(db, job, node_id)
    text = node_text(texts)
    return {
        "node": n.id,
        "level": n.level,
        "title": n.title,
        "budget_words": n.budget_words,
        "words": sum(c.word_count for c in chunks),
        "chunks": [{"chunk": c.ordinal, "words": c.word_count, "status": c.status} for c in chunks],
        "written": bool(chunks) and all(c.status == "done" for c in chunks),
        "text": text,
        "locked": n.locked_at is not None,
        "locked_by": n.locked_by,
        "locked_at": _iso(n.locked_at),
        "lock": None if lock is None else {"node": lock.id, "title": lock.title, "by": lock.locked_by},
        "versions": [0, *(e["number"] for e in history if e["status"] == "done" and e["kind"] != "rollback")],
        "edits": history,
    }


async def versions(db: Database, job: Job) -> list[dict[str, Any]]:
    """The document's versions, oldest first, each with the edit that made it (version 1: the job)."""
    async with db.tx() as s:
        docs = (
            await s.execute(
                select(Document.version, Document.word_count, Document.sha256, Document.created_at, Document.audit_seq)
                .where(Document.job_id == job.id, Document.role == "output")
                .order_by(Document.version)
            )
        ).all()
        made = {
            e.document_version: e
            for e in (await s.execute(select(Edit).where(Edit.job_id == job.id, Edit.status == "done"))).scalars()
        }
    return [
        {
            "version": v,
            "words": w,
            "sha256": h,
            "created_at": _iso(t),
            "audit_seq": seq,
            "target_met": w >= job.target_words,
            "edit": edit_view(made[v]) if v in made else None,
        }
        for v, w, h, t, seq in docs
    ]


async def document(db: Database, job_id: uuid.UUID, version: int) -> Document | None:
    async with db.tx() as s:
        return (
            await s.execute(
                select(Document).where(
                    Document.job_id == job_id, Document.role == "output", Document.version == version
                )
            )
        ).scalar_one_or_none()


async def diff(db: Database, job: Job, a: int, b: int, context: int = 3) -> dict[str, Any] | None:
    """A unified diff of two versions of the document (lines), with what changed in words."""
    old, new = await document(db, job.id, a), await document(db, job.id, b)
    if old is None or new is None:
        return None
    lines = list(
        difflib.unified_diff(
            old.text.splitlines(), new.text.splitlines(), f"version {a}", f"version {b}", n=context, lineterm=""
        )
    )
    return {
        "job_id": str(job.id),
        "from": a,
        "to": b,
        "words": {"from": old.word_count, "to": new.word_count},
        "lines_added": sum(1 for x in lines if x.startswith("+") and not x.startswith("+++")),
        "lines_removed": sum(1 for x in lines if x.startswith("-") and not x.startswith("---")),
        "diff": "\n".join(lines) + ("\n" if lines else ""),
    }


async def _changed_chunks(s: AsyncSession, job_id: uuid.UUID) -> set[int]:
    """The chunks whose text now differs from what the job wrote: edited and not rolled back to it.
    What the job wrote is the version each had before the first edit that changed it."""
    done = (
        (await s.execute(select(Edit).where(Edit.job_id == job_id, Edit.status == "done").order_by(Edit.number)))
        .scalars()
        .all()
    )
    origin: dict[int, int] = {}
    for e in done:
        for cid in (e.detail or {}).get("after", {}):
            version = ((e.detail or {}).get("before", {}).get(cid) or {}).get("version")
            if version is not None:
                origin.setdefault(int(cid), int(version))
    if not origin:
        return set()
    latest = (
        await s.execute(
            select(ChunkVersion.chunk_id, ChunkVersion.sha256)
            .where(ChunkVersion.chunk_id.in_(origin))
            .ext(distinct_on(ChunkVersion.chunk_id))
            .order_by(ChunkVersion.chunk_id, ChunkVersion.version.desc())
        )
    ).all()
    first = dict(
        (
            await s.execute(select(ChunkVersion.id, ChunkVersion.sha256).where(ChunkVersion.id.in_(origin.values())))
        ).all()
    )
    return {cid for cid, sha in latest if first.get(origin[cid]) != sha}


async def book_map(db: Database, job: Job) -> dict[str, Any]:
    """The book at a glance: its chapters (or, without chapters, its sections) as tiles in plan
    order, grouped by part, each with its state (planned, writing, done, locked, regenerated),
    words against budget, findings, and when it was written (the timeline)."""
    async with db.tx() as s:
        nodes = (
            (await s.execute(select(PlanNode).where(PlanNode.job_id == job.id).order_by(PlanNode.position)))
            .scalars()
            .all()
        )
        by_id = {n.id: n for n in nodes}
        tile_level = "chapter" if any(n.level == "chapter" for n in nodes) else "section"
        tiles = [n for n in nodes if n.level == tile_level or (n.is_continuation and n.depth == 1)]
        chunk_rows = (
            await s.execute(
                select(
                    Chunk.id, Chunk.section_id, Chunk.unit_id, Chunk.status, Chunk.word_count, Chunk.completed_at
                ).where(Chunk.job_id == job.id)
            )
        ).all()
        # A chunk's writing begins with its first model call (its first attempt is saved after it).
        started = dict(
            (
                await s.execute(
                    select(LlmCall.chunk_id, func.min(LlmCall.started_at))
                    .where(LlmCall.job_id == job.id, LlmCall.chunk_id.is_not(None))
                    .group_by(LlmCall.chunk_id)
                )
            ).all()
        )
        findings = (
            await s.execute(
                select(ContinuityFinding.chunk_id, ContinuityFinding.status, func.count())
                .where(ContinuityFinding.job_id == job.id)
                .group_by(ContinuityFinding.chunk_id, ContinuityFinding.status)
            )
        ).all()
        changed = await _changed_chunks(s, job.id)
    tile_of_section: dict[int, int] = {}
    for n in nodes:  # the tile a section belongs to: itself, or its nearest tile above
        if n.level == "section":
            cur: PlanNode | None = n
            while cur is not None and cur not in tiles:
                cur = by_id.get(cur.parent_id) if cur.parent_id else None
            if cur is not None:
                tile_of_section[n.id] = cur.id
    agg: dict[int, dict[str, Any]] = {t.id: {"chunks": [], "open": 0, "found": 0} for t in tiles}
    where = {}
    for cid, sid, _unit, status, words, done_at in chunk_rows:
        t = tile_of_section.get(sid)
        if t is not None:
            agg[t]["chunks"].append((cid, status, words, done_at))
            where[cid] = t
    for cid, status, n in findings:
        if cid in where:
            agg[where[cid]]["found"] += n
            agg[where[cid]]["open"] += n if status == "open" else 0

    def locked(n: PlanNode) -> bool:
        cur: PlanNode | None = n
        while cur is not None:
            if cur.locked_at is not None:
                return True
            cur = by_id.get(cur.parent_id) if cur.parent_id else None
        return False

    out = []
    for t in tiles:
        cs = agg[t.id]["chunks"]
        ids = [c[0] for c in cs]
        starts = [started[i] for i in ids if i in started]
        done = bool(cs) and all(c[1] == "done" for c in cs)
        ends = [c[3] for c in cs if c[3] is not None]
        state = (
            "locked" if locked(t) else "regenerated" if changed & set(ids) else "done" if done
            else "writing" if starts or any(c[1] != "pending" for c in cs) else "planned"
        )  # fmt: skip
        parent = by_id.get(t.parent_id) if t.parent_id else None
        out.append(
            {
                "node": t.id,
                "level": t.level,
                "title": t.title or ("continuation" if t.is_continuation else ""),
                "part": parent.id if parent is not None and parent.level == "part" else None,
                "part_title": parent.title if parent is not None and parent.level == "part" else None,
                "state": state,
                "words": sum(c[2] for c in cs if c[1] == "done"),
                "budget_words": t.budget_words,
                "chunks_done": sum(1 for c in cs if c[1] == "done"),
                "chunks_total": len(cs),
                "findings": agg[t.id]["found"],
                "open_findings": agg[t.id]["open"],
                "started_at": _iso(min(starts)) if starts else None,
                "ended_at": _iso(max(ends)) if done and ends else None,
            }
        )
    return {
        "job_id": str(job.id),
        "status": job.status,
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "now": _iso(dt.datetime.now(dt.UTC)),
        "tiles": out,
    }
