"""The rows of an author's edit (``activities.edits``, ``activities.edit_checks``): the edit's own
record (what it did, in ``detail``), a chunk's new version with its memory and findings (and the
answers of its continuity repair as the chunk's attempts: ``activities.answers``), where a rollback
takes each chunk, and the output's latest version."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from activities.answers import store_answers
from activities.base import add_version, check_version_length, latest_version
from activities.repair import Checked
from db.loop import Edit
from db.manuscript import Chunk
from db.memory import finding_events, finding_rows, store_memory
from db.models import Document, Job
from db.session import JobTx


@dataclass
class EditRef:
    job_id: str
    edit_id: int


@dataclass
class EditChunkRef:
    job_id: str
    edit_id: int
    chunk_id: int


@dataclass
class EditChunkDone:
    """A chunk of the edit written, or why the edit cannot go on (its error code and reason)."""

    error_code: str | None = None
    reason: str | None = None


@dataclass
class EditPlan:
    chunk_ids: list[int] = field(default_factory=list)  # the chunks the edit writes, in order
    check_instruction: bool = False  # a regenerate with an instruction: checked against the new text


async def load_edit(tx: JobTx, edit_id: int) -> Edit:
    edit = await tx.session.get(Edit, edit_id)
    if edit is None or edit.job_id != tx.job_id:
        raise LookupError(f"edit {edit_id} is not an edit of job {tx.job_id}")
    return edit


def note(edit: Edit, **changes: Any) -> None:
    """Add to what the edit records it did (a new dict: the JSON column sees the change)."""
    edit.detail = {**(edit.detail or {}), **changes}


async def store_version(
    tx: JobTx,
    job: Job,
    edit: Edit,
    chunk: Chunk,
    reason: str,
    text: str,
    checked: Checked | None,
    memory_id: int | None,
    told: dict[str, Any] | None = None,
) -> None:
    """A chunk's new version by an edit (and its continuity repair, if the checks made one), its
    memory (the new delta's ledger entries, or an earlier version's for a rollback), its findings,
    and what the edit did to it (``told``: more for its event)."""
    latest = await latest_version(tx, chunk.id)
    n = (latest.version if latest else 0) + 1
    versions = [add_version(tx, chunk, n, reason, text, {"edit": edit.number})]
    if checked is not None:  # the repair's answers are the chunk's attempts, used or not
        kept, attempts = await store_answers(tx, chunk, checked.answers, checked.text, edit=edit.number)
        if checked.text != text:
            repaired = [f.subtype for f in checked.findings if checked.is_repaired(f)]
            detail = {"edit": edit.number, "repaired": repaired, "attempts": attempts}
            versions.append(add_version(tx, chunk, n + 1, "continuity_repair", kept, detail))
    await tx.session.flush()
    last = versions[-1]
    await check_version_length(tx, chunk, last)  # the chunk as the edit leaves it: short or not, said
    findings = []
    if checked is not None:
        rem = checked.remembered
        await store_memory(tx, chunk, last.id, chunk.state_after_id, rem.memory, rem.source)
        repair = last.id if len(versions) > 1 else None
        findings = finding_rows(
            tx, checked.fates(), chunk=chunk, version_id=versions[0].id, repair_version_id=repair,
            call_id=rem.calls[0] if rem.calls else None, rounds=checked.rounds, edit_id=edit.id,
        )  # fmt: skip
        await tx.session.flush()
        finding_events(tx, findings, chunk, "edit")
        note(
            edit, summaries={**edit.detail.get("summaries", {}), str(chunk.ordinal): checked.remembered.memory.summary}
        )
    else:  # a rollback: the memory of the version gone back to; an emptied chunk: none
        chunk.memory_version_id = memory_id if memory_id is not None else last.id
    was = chunk.word_count
    chunk.word_count = last.word_count
    await tx.session.flush()
    job.words_written = (
        await tx.session.execute(select(func.coalesce(func.sum(Chunk.word_count), 0)).where(Chunk.job_id == job.id))
    ).scalar_one()
    after = {
        "version": last.id,
        "version_no": last.version,
        "memory": chunk.memory_version_id,
        "words": last.word_count,
    }
    note(edit, after={**edit.detail.get("after", {}), str(chunk.id): after})
    tx.event(
        "edit",
        "chunk",
        {
            "edit": edit.number,
            "chunk": chunk.ordinal,
            "reason": reason,
            "version_before": latest.version if latest else None,
            "version_after": last.version,
            "words_before": was,
            "words_after": last.word_count,
            "memory": checked.remembered.source if checked is not None else "rollback",
            "findings": len(findings),
            "repaired": sum(1 for f in findings if f.status == "repaired"),
            **(told or {}),
        },
    )


async def rollback_targets(tx: JobTx, edit: Edit, chunk_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Where a rollback takes each chunk: its version and memory just after edit ``to`` (the last
    done edit up to it that changed the chunk), or as the job wrote it (``to`` = 0, or no edit up
    to ``to`` changed it)."""
    to = int(edit.params["to"])
    earlier = (
        (
            await tx.session.execute(
                select(Edit)
                .where(Edit.job_id == tx.job_id, Edit.status == "done", Edit.number < edit.number)
                .order_by(Edit.number)
            )
        )
        .scalars()
        .all()
    )
    out: dict[int, dict[str, Any]] = {}
    for cid in chunk_ids:
        state: dict[str, Any] | None = None
        for e in earlier:
            b, a = e.detail.get("before", {}).get(str(cid)), e.detail.get("after", {}).get(str(cid))
            if state is None and a is not None:
                state = b  # as it was before the first edit that changed it
            if e.number <= to and a is not None:
                state = a
        if state is None:  # no edit ever changed it: it stays
            v = await latest_version(tx, cid)
            chunk = await tx.session.get(Chunk, cid)
            assert v is not None and chunk is not None
            state = {"version": v.id, "memory": chunk.memory_version_id}
        out[cid] = {"version": state["version"], "memory": state["memory"]}
    return out


async def output_version(tx: JobTx) -> int:
    """The latest version of the job's output (0: none yet)."""
    return (
        await tx.session.execute(
            select(func.coalesce(func.max(Document.version), 0)).where(
                Document.job_id == tx.job_id, Document.role == "output"
            )
        )
    ).scalar_one()
