"""The one seam checker, the job's seam step and an edit's checks both use: a unit's chunks checked
again against the ledger as it now stands before it (``check``), and the seam row, its repaired
versions and its findings stored with the verdict ``core.seam`` decides (``store``).

Which chunks: every chunk of a unit written from a handoff (its chapter was written in parallel
and could not see its predecessor), and every chunk whose own check ran while a chunk before it
was still being written (its ledger was not whole). Each is checked by the rules against that
ledger plus what the unit's earlier chunks established; by the judge too when it opens the unit,
names someone or something its own check could not have seen, or states a value the rules cannot
decide. Locks hold: a chunk under a locked node is checked and never repaired, at the check and
again when the seam is stored (a lock taken meanwhile wins), its findings left open.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from activities.answers import store_answers
from activities.base import add_version, check_version_length, latest_version, latest_versions, load_job, plan_node
from activities.llm import LlmClient
from activities.memory import Remembered
from activities.repair import Checked, check_and_repair
from core.continuity import BROKEN_SEAM, repeated_opening
from core.edits import memory_of
from core.memory import ChunkMemory, Entry, Ledger, as_entry, entries_of, fold
from core.names import Mentions
from core.seam import Fate, SeamVerdict, checks, decide
from db.locks import locked_chunks
from db.manuscript import Chunk, CoherenceState, ContinuityFinding, LedgerEntry, PlanNode, SeamCheck
from db.memory import finding_events, finding_rows, store_memory
from db.session import Database, JobTx

Then = Callable[[JobTx, PlanNode], Awaitable[list[tuple[PlanNode, list[str]]]]]


@dataclass
class UnitChunk:
    """A chunk as a seam check reads it: its latest text and version, its stored memory, what its
    own check found, how far the ledger its own check saw went, and whether it is locked."""

    chunk_id: int
    ordinal: int
    text: str
    stored: Remembered
    version_id: int
    known: set[tuple[str, int | None]] = field(default_factory=set)  # (subtype, entry) of its own findings
    seen: int = 0  # the last ledger entry its own check could see
    whole: bool = True  # its own check ran with every chunk before it written
    locked: bool = False


async def unit_chunks(tx: JobTx, chunks: list[Chunk], seen: int = 0) -> list[UnitChunk]:
    """The chunks as the job's seam check reads them: latest text, memory (their states'), own
    findings, how far their own checks saw (``seen``: a handoff's, for states that do not say)."""
    versions = await latest_versions(tx, [c.id for c in chunks])
    ids = [c.state_after_id for c in chunks if c.state_after_id is not None]
    found = await tx.session.execute(select(CoherenceState).where(CoherenceState.id.in_(ids)))
    states = {s.id: s for s in found.scalars()}
    known: dict[int, set[tuple[str, int | None]]] = {c.id: set() for c in chunks}
    for f in await chunk_findings(tx, [c.id for c in chunks]):
        known[f.chunk_id].add((f.subtype, f.entry_id))
    locked = await locked_chunks(tx.session, [c.id for c in chunks])
    out = []
    for c in chunks:
        version, state = versions[c.id], states[c.state_after_id]  # type: ignore[index]
        delta = state.delta or {}
        mem = ChunkMemory.model_validate(delta.get("memory") or {"summary": state.summary or "-"})
        stored = Remembered(mem, state.source, why_fallback=str(delta.get("why_fallback") or ""))
        out.append(
            UnitChunk(
                c.id,
                c.ordinal,
                version.text,
                stored,
                version.id,
                known[c.id],
                seen=int(delta.get("ledger_through", seen)),
                whole=bool(delta.get("ledger_whole", True)),
                locked=c.id in locked,
            )  # fmt: skip
        )
    return out


async def unit_chunk_now(tx: JobTx, c: Chunk) -> UnitChunk:
    """A chunk as it now stands, for an edit's seam check: its latest text and its current memory."""
    version = await latest_version(tx, c.id)
    assert version is not None
    state = await tx.session.get(CoherenceState, c.state_after_id)
    entries = await version_entries(tx, [c.memory_version_id] if c.memory_version_id else [])
    mem = memory_of(entries, state.summary if state is not None else "")
    known = {(f.subtype, f.entry_id) for f in await chunk_findings(tx, [c.id])}
    source = entries[0].source if entries else "fallback"
    locked = c.id in await locked_chunks(tx.session, [c.id])
    return UnitChunk(c.id, c.ordinal, version.text, Remembered(mem, source), version.id, known, locked=locked)


async def version_entries(tx: JobTx, version_ids: list[int]) -> list[Entry]:
    """The ledger entries chunk versions set, in order."""
    rows = await tx.session.execute(
        select(LedgerEntry).where(LedgerEntry.chunk_version_id.in_(version_ids)).order_by(LedgerEntry.id)
    )
    return [
        Entry(
            r.id,
            r.kind,
            r.key,
            r.name,
            r.value,
            r.quote,
            r.doc_order,
            r.attribute,
            r.etype,
            r.when_,
            r.chunk_version_id,
            r.source,
        )  # fmt: skip
        for r in rows.scalars()
    ]


async def chunk_findings(tx: JobTx, ids: list[int], edit_id: int | None = None) -> list[ContinuityFinding]:
    """What chunks' own checks found when the job wrote them (or, with ``edit_id``, when that edit did);
    not a broken seam inside their unit (the stitch's finding: no seam with the unit before)."""
    by = ContinuityFinding.edit_id.is_(None) if edit_id is None else ContinuityFinding.edit_id == edit_id
    rows = await tx.session.execute(
        select(ContinuityFinding).where(
            ContinuityFinding.chunk_id.in_(ids),
            ContinuityFinding.seam_check_id.is_(None),
            ContinuityFinding.subtype != BROKEN_SEAM,
            by,
        )
    )
    return list(rows.scalars().all())


class SeamChecker:
    def __init__(self, db: Database, llm: LlmClient) -> None:
        self.db, self.llm = db, llm

    async def check(
        self,
        jid: uuid.UUID,
        unit_id: int,
        model: str,
        ledger: Ledger,
        before: str,
        mine: list[UnitChunk],
        *,
        opening: bool,
        only: set[int] | None = None,
    ) -> list[tuple[UnitChunk, Checked]]:
        """``mine`` (the chunks of one unit, in order; those in ``only`` when given) checked against
        ``ledger`` (what stands before the unit) plus what the earlier of them established;
        ``opening``: ``mine[0]`` opens the unit after ``before`` (judged, and checked for
        repeating that ending)."""
        out: list[tuple[UnitChunk, Checked]] = []
        own: list[Entry] = []
        for k, uc in enumerate(mine):
            if only is not None and uc.chunk_id not in only:
                own += [
                    as_entry(e, -(len(own) + i + 1), uc.ordinal) for i, e in enumerate(entries_of(uc.stored.memory))
                ]
                continue
            said = Mentions(uc.text)
            unseen = any(
                said.has(v.key)
                for v in ledger.entities.values()
                if v.intro.id > uc.seen or any(a.id > uc.seen for a in v.attributes.values())
            )
            res = await check_and_repair(
                self.llm,
                job_id=jid,
                chunk_id=uc.chunk_id,
                model=model,
                passage=uc.text,
                ledger=fold([*ledger.by_ref().values(), *own]),
                request_key=f"seam:{unit_id}:{uc.chunk_id}",
                min_words=1,
                stored=uc.stored,
                judge=(opening and k == 0) or unseen,
                locked=uc.locked,
            )
            if opening and k == 0:
                res.findings += repeated_opening(before, res.text)
            # What this chunk's own check found when it was accepted is reported there already.
            res.keep(lambda f, r=res, known=uc.known: (f.subtype, f.entry_id) not in known or r.is_repaired(f))
            out.append((uc, res))
            own += [
                as_entry(e, -(len(own) + i + 1), uc.ordinal) for i, e in enumerate(entries_of(res.remembered.memory))
            ]
        return out

    async def store(
        self,
        jid: uuid.UUID,
        unit_id: int,
        mode: str,
        ids: tuple[int, int, int, int],
        checked: list[tuple[UnitChunk, Checked]],
        *,
        strict: bool,
        own_unchecked: str = "",
        edit_id: int | None = None,
        then: Then | None = None,
    ) -> tuple[SeamVerdict | None, list[tuple[PlanNode, list[str]]]]:
        """The seam row, its repaired versions and its findings, with ``core.seam``'s verdict, in one
        transaction; then ``then(tx, unit)`` (the job's: the unit complete, the summaries it calls
        for) unless strict continuity breaks here. ``checked`` empty: the seam is what the first
        chunk's own check found when it was written (``own_unchecked``: why that check could not
        answer, if it could not). With ``edit_id``: the seam checked again by an edit (a row of its
        own). Idempotent: a retry finds the row. Returns (the verdict, what ``then`` returned)."""
        pred_id, pred_state, used_state, first_id = ids
        async with self.db.job_tx(jid) as tx:
            await load_job(tx, jid)
            unit = await plan_node(tx, unit_id)
            mine = SeamCheck.edit_id.is_(None) if edit_id is None else SeamCheck.edit_id == edit_id
            if (await tx.session.execute(select(SeamCheck.id).where(SeamCheck.unit_id == unit.id, mine))).first():
                return None, (await then(tx, unit) if then is not None else [])
            repairs = await self._repairs(tx, unit, checked)
            fates = [
                Fate("repaired" if fixed and v else "open", f.severity, v if fixed else None)
                for _, _, res, v in repairs
                for f, fixed in res.fates()
            ]
            if first_id not in {uc.chunk_id for uc, _ in checked}:  # the first chunk's own check stands
                own = await chunk_findings(tx, [first_id], edit_id)
                fates += [Fate(f.status, f.severity, f.repair_version_id) for f in own]
            unchecked = [res.unchecked for _, res in checked] + [own_unchecked]
            verdict = decide(fates, unchecked, strict=strict and edit_id is None, title=unit.title or "")
            record = checks(
                verdict, mode=mode, at_seam=len(checked), judged=sum(1 for _, r in checked if r.judged),
                findings=len(fates), unchecked=unchecked, locked=sum(1 for uc, _ in checked if uc.locked),
                edit_id=edit_id,
            )  # fmt: skip
            seam = SeamCheck(
                job_id=jid,
                unit_id=unit.id,
                chunk_id=first_id,
                predecessor_chunk_id=pred_id,
                predecessor_state_id=pred_state,
                successor_state_id=used_state,
                mode=mode,
                differences={},
                conflicts=[],
                repaired=verdict.repair_version is not None,
                repair_version_id=verdict.repair_version,
                status=verdict.status,
                validated=verdict.validated,
                unchecked_reason=verdict.unchecked_reason,
                edit_id=edit_id,
                checks=record,
            )
            tx.session.add(seam)
            await tx.session.flush()
            for chunk, uc, res, v in repairs:
                call = res.remembered.calls[0] if res.remembered.calls else None
                fs = finding_rows(
                    tx, res.fates(), chunk=chunk, version_id=uc.version_id, repair_version_id=v, call_id=call,
                    rounds=res.rounds, seam_check_id=seam.id, edit_id=edit_id,
                )  # fmt: skip
                await tx.session.flush()
                finding_events(tx, fs, chunk, "seam")
            tx.event(
                "seam",
                verdict.status,
                {
                    "unit": unit.id,
                    "title": unit.title,
                    "mode": mode,
                    "findings": len(fates),
                    "open": verdict.open_major,
                    "repaired_chunks": {c.ordinal: v for c, _, _, v in repairs if v},
                    "checks": record,
                    **({"unchecked": verdict.unchecked_reason} if verdict.unchecked_reason else {}),
                    **({"edit": edit_id} if edit_id is not None else {}),
                },
            )
            if verdict.broken:
                job = await load_job(tx, jid)
                job.current_step = f"continuity: the seam before {unit.title} is {verdict.status}"
                todo: list[tuple[PlanNode, list[str]]] = []
            else:
                todo = await then(tx, unit) if then is not None else []
        return verdict, todo

    async def _repairs(
        self, tx: JobTx, unit: PlanNode, checked: list[tuple[UnitChunk, Checked]]
    ) -> list[tuple[Chunk, UnitChunk, Checked, int | None]]:
        """Each rewritten chunk as a new ``seam_repair`` version (its answers the chunk's attempts,
        through the gate's claims: what the document says elsewhere is cut, their words recorded)
        with its memory, unless it is locked now: then nothing is repaired into it, its findings
        stay open and its answers are stored unused."""
        ids = [uc.chunk_id for uc, _ in checked]
        rows = {c.id: c for c in (await tx.session.execute(select(Chunk).where(Chunk.id.in_(ids)))).scalars()}
        changed = [uc.chunk_id for uc, res in checked if res.text != uc.text]
        latest = await latest_versions(tx, changed)
        if changed:  # under the job's row lock: a lock being taken now is seen here, or waits for this
            await load_job(tx, tx.job_id, lock=True)
        locked = await locked_chunks(tx.session, changed)
        out = []
        for uc, res in checked:
            chunk, repair = rows[uc.chunk_id], None
            if res.text != uc.text and chunk.id in locked:
                for f, fixed in res.fates():
                    if fixed:
                        f.tried = "not repaired: its chapter was locked while the seam was checked"
                res.fixed = set()
                res.unused("not used: the chapter was locked while the seam was checked")
            repairs_it = res.text != uc.text and bool(res.fixed)
            if not repairs_it:
                res.unused("not used: nothing was repaired")
            kept, attempts = await store_answers(tx, chunk, res.answers, res.text if repairs_it else uc.text)
            if repairs_it:
                repaired = [f.subtype for f in res.findings if res.is_repaired(f)]
                repair = add_version(
                    tx, chunk, latest[chunk.id].version + 1 if chunk.id in latest else 1, "seam_repair", kept,
                    {"unit": unit.id, "repaired": repaired, "attempts": attempts},
                )  # fmt: skip
                await check_version_length(tx, chunk, repair)  # a repair may leave it short: said so
                await tx.session.flush()
                job = await load_job(tx, tx.job_id)
                job.words_written = job.words_written + repair.word_count - chunk.word_count
                chunk.word_count = repair.word_count
                rem = res.remembered
                await store_memory(tx, chunk, repair.id, chunk.state_after_id, rem.memory, rem.source)
            out.append((chunk, uc, res, repair.id if repair is not None else None))
        return out
