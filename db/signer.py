"""Signing a job's log: a checkpoint of its tree, signed with the operator's key only once the tree
is shown to extend what was signed and witnessed before.

The job row's frontier and head are the database's word, and whoever holds the database can
rewrite them with the log. So before it signs, the signer checks, from the stored tree:

1. the root its stored nodes give at this size is the frontier's root (an altered tree);
2. an RFC 9162 consistency proof from the last checkpoint signed for the job to this tree holds
   (a log rewritten under its checkpoints);

then submits the checkpoint to each witness (``db.witness``) with a proof from the size that
witness holds, which it checks against the root it cosigned: storage of its own, beyond reach
of whoever holds the database. A tree that any of them refuses is not signed as the log's: no
checkpoint is stored, and the refusal is an alarm (``Refusal``: the caller records it in the log,
on the job row and in the metrics, and tells the job's owner). A witness that does not answer
leaves the checkpoint unwitnessed, signed all the same: the next checkpoint, proved from the
size the witness still holds, catches it up.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core import checkpoint, merkle
from core.merkle import Node
from db import logtree
from db.models import AuditCheckpoint, AuditCosignature
from db.witness import Answer, WitnessClient
from metrics import AUDIT_ALARMS, AUDIT_WITNESS

log = structlog.get_logger(__name__)


@dataclass
class Signer:
    """The operator's key, how often it signs, and the witnesses a checkpoint goes to (``quorum``
    of them must cosign for it to count as witnessed; default: all)."""

    key: checkpoint.SignerKey
    every: int = 1000
    witnesses: Sequence[WitnessClient] = ()
    quorum: int | None = None
    clock: Callable[[], float] = time.time

    @property
    def needed(self) -> int:
        return len(self.witnesses) if self.quorum is None else min(self.quorum, len(self.witnesses))


@dataclass
class Refusal:
    """A tree refused: by whom, why, at which size."""

    by: str  # "signer" or a witness's key label
    reason: str
    tree_size: int
    status: int | None = None
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    def as_event(self) -> dict[str, object]:
        return {"by": self.by, "reason": self.reason, "tree_size": self.tree_size, "status": self.status, "at": self.at}


@dataclass
class Signed:
    row: AuditCheckpoint
    cosignatures: list[AuditCosignature] = field(default_factory=list)
    unanswered: list[Answer] = field(default_factory=list)


# The last checkpoint signed for the job, and the size each witness last cosigned, in one read.
_BEFORE = text(
    "(SELECT '', tree_size, root FROM audit_checkpoints WHERE job_id = :j ORDER BY tree_size DESC LIMIT 1)"
    " UNION ALL SELECT key_id, max(tree_size), NULL FROM audit_cosignatures WHERE job_id = :j GROUP BY key_id"
)


async def sign(
    signer: Signer,
    session: AsyncSession,
    job_id: uuid.UUID,
    size: int,
    root: bytes,
    fresh: Mapping[Node, bytes],
    *,
    end: int | None = None,
    download: bool = False,
) -> Signed | Refusal:
    """Check the tree of ``size`` leaves with ``root`` (``fresh``: its nodes not yet stored), sign
    it and have it witnessed; the rows to store, or the refusal. Every stored hash the checks and
    the witnesses' proofs need is read at once (O(log n) of them, two indexed queries)."""
    t0 = time.perf_counter()
    last: tuple[int, bytes] | None = None
    held: dict[str, int] = {}
    for who, n, r in await session.execute(_BEFORE, {"j": job_id}):
        if who == "":
            last = (int(n), bytes.fromhex(r))
        else:
            held[who] = int(n)
    olds = {n for n in (last[0] if last else 0, *(held.get(w.key.label, 0) for w in signer.witnesses)) if 0 < n < size}
    ranges = [(0, size)] + [r for old in olds for r in merkle.consistency_ranges(old, size)]
    try:
        nodes = await logtree.read_nodes(session, job_id, merkle.needed(ranges), fresh)
    except KeyError as exc:
        return _refused(job_id, "signer", f"the log's tree is incomplete: {exc.args[0]}", size)
    stored = merkle.range_hash(0, size, nodes)
    if stored != root:
        why = f"its stored tree has root {stored.hex()} at {size} events, its job row {root.hex()}: the log was altered"
        return _refused(job_id, "signer", why, size)
    proofs = {old: merkle.consistency_proof(old, size, nodes) for old in olds}
    if last is not None:
        try:
            merkle.verify_consistency(last[0], last[1], size, root, proofs.get(last[0], []))
        except merkle.ProofError as exc:
            why = f"the tree of {size} events does not extend the checkpoint signed at {last[0]}: {exc}"
            return _refused(job_id, "signer", why, size)
    note = signer.key.sign(
        checkpoint.body(job_id, size, root, time=int(signer.clock()), prev=last[0] if last else 0, end=end,
                        download=download)
    )  # fmt: skip
    row = AuditCheckpoint(
        job_id=job_id,
        tree_size=size,
        root=root.hex(),
        key_id=signer.key.verifier.label,
        note=note,
        prev_size=last[0] if last is not None else None,
    )
    if not signer.witnesses:
        return Signed(row)

    async def prove(old: int) -> list[bytes]:  # a witness may name a size not foreseen (a 409): read then
        if old not in proofs:
            proofs[old] = await logtree.consistency_proof(session, job_id, old, size, fresh) if old <= size else []
        return proofs[old]

    out = Signed(row)
    for w in signer.witnesses:
        try:
            answer = await w.add_checkpoint(row.note, held.get(w.key.label, 0), prove, size)
        except KeyError as exc:  # a node the proof from the witness's size needs is not stored
            answer = Answer("refused", w.key.label, why=f"no proof from the size it holds: {exc.args[0]}")
        if answer.kind == "refused":
            AUDIT_WITNESS.labels("refused").observe(time.perf_counter() - t0)
            why = f"the witness {answer.witness} refused it: {answer.why}"
            return _refused(job_id, answer.witness, why, size, answer.status)
        if answer.kind == "cosigned" and answer.line is not None:
            out.cosignatures.append(
                AuditCosignature(job_id=job_id, tree_size=size, key_id=answer.witness, line=answer.line)
            )
        else:
            out.unanswered.append(answer)
            log.warning("audit.unwitnessed", job_id=str(job_id), tree_size=size, witness=answer.witness, why=answer.why)
    outcome = "cosigned" if len(out.cosignatures) >= signer.needed else "unwitnessed"
    AUDIT_WITNESS.labels(outcome).observe(time.perf_counter() - t0)
    return out


def _refused(job_id: uuid.UUID, by: str, reason: str, size: int, status: int | None = None) -> Refusal:
    AUDIT_ALARMS.labels("signer" if by == "signer" else "witness").inc()
    log.error("audit.alarm", job_id=str(job_id), by=by, reason=reason, tree_size=size)
    return Refusal(by, reason, size, status)


async def probe(
    witnesses: Sequence[WitnessClient], session: AsyncSession, job_id: uuid.UUID, note: str
) -> list[Answer]:
    """The log's last checkpoint (``note``) put to each witness as the tree it should hold: sent
    with its own size as the old size, it is cosigned again by a witness that holds it (or, proved
    from a smaller size the witness holds, caught up to); a witness that holds a larger tree, or
    another root at this size, refuses it: the database's log was cut or rewritten."""
    cp = checkpoint.parse(note)

    async def prove(old: int) -> list[bytes]:
        return await logtree.consistency_proof(session, job_id, old, cp.size) if old <= cp.size else []

    out = []
    for w in witnesses:
        try:
            out.append(await w.add_checkpoint(note, cp.size, prove, cp.size))
        except KeyError as exc:
            out.append(Answer("refused", w.key.label, why=f"no proof from the size it holds: {exc.args[0]}"))
    return out
