"""A selection's rewrite checked again where it is published (``activities.edit_checks``): the
node's text as stored is the one the proof was made for (its hash, and the hashes of the text
before and after the selection), and the document differs from the version before the edit only
inside the selection (``core.scope.document_proof``). Anything else and the document is not
published: the edit fails with ``E_EDIT_SCOPE``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from core.edits import node_text
from core.scope import document_proof
from core.text import sha256
from db.loop import Edit
from db.manuscript import PlanNode
from db.models import Document
from db.session import JobTx
from db.tree import chunks_under, latest_text


async def scope_held(tx: JobTx, edit: Edit, doc: str) -> dict[str, Any]:
    """The proof of ``edit`` (a rewrite) checked against the node and the document ``doc`` as they
    now stand: what held, and ``problems`` for what did not."""
    proof = edit.detail.get("scope") or {}
    if not proof:
        return {"problems": ["the rewrite has no proof of its scope"]}
    node = await tx.session.get(PlanNode, edit.node_id)
    assert node is not None
    text = node_text([(await latest_text(tx.session, c.id)).strip() for c in await chunks_under(tx.session, node)])
    start, new = int(edit.detail["selection"]["start"]), proof["selection_after"]
    problems = []
    checks = {
        "text_after_sha256": sha256(text),
        "prefix_sha256": sha256(text[:start]),
        "suffix_sha256": sha256(text[start + len(new) :]),
    }
    for k, v in checks.items():
        if proof[k] != v:
            problems.append(f"the node's {k.removesuffix('_sha256').replace('_', ' ')} is not what was proved")
    out: dict[str, Any] = {
        "node": {"node": edit.node_id, **{k: proof[k] for k in checks}, "held": not problems},
        "selection_before": proof["selection_before"][:2000],
        "selection_after": new[:2000],
    }
    if int(edit.detail.get("top_ups", 0)) == 0:  # a top-up adds a section at the end: the edit says so
        version = int(edit.detail.get("document_before", 0))
        before = (
            await tx.session.execute(
                select(Document.text).where(
                    Document.job_id == tx.job_id, Document.role == "output", Document.version == version
                )
            )
        ).scalar_one_or_none()
        if before is not None:
            out["document"] = document_proof(before, doc, proof["selection_before"], new)
            problems += out["document"].pop("problems")
    else:
        out["document"] = {"top_ups": int(edit.detail["top_ups"]), "note": "a top-up section follows the document"}
    out["problems"] = problems
    return out
