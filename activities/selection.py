"""A selection of a node rewritten as its author asked, within its scope (``activities.edits``
runs it for the selection's first chunk).

The model is asked for the selection only. Its answer goes through the gate (junk cut, and what
the document already says elsewhere, ``activities.gating``), then must stay inside the selection
(``core.scope.selection_problems``: not empty, not longer than the selection allows, not the text
around it said again, no talk about the task, joining its neighbours on the sentence boundaries
the selection had). An answer that fails is asked again, told why, up to ``REWRITE_TRIES`` times,
then the edit fails (``E_EDIT_SCOPE``): nothing is committed. An answer that passes is spliced
in and the splice proved (``core.scope.prove``: every byte before and after the selection as it
was) before anything is stored; the proof (the selection before and after, the hashes of the
text around it) goes in the edit's ``detail`` and its ``edit scope`` event, and the document's
publication checks it again. With an instruction, the judge checks that the answer follows it
(``activities.coverage_judge``); one that does not is asked once more, and still ignored, it is a
finding. Every answer is a chunk attempt of its own (kind ``rewrite``), its words and cuts counted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from temporalio import activity

from activities.base import ModelStep, load_job
from activities.coverage_judge import store_verdicts, verdicts
from activities.edit_prompts import rewrite_messages
from activities.edit_rows import load_edit, note, store_answer
from activities.gating import claim, gate, taken
from activities.prompts import max_tokens_for
from core.coverage import Item, Verdict
from core.edits import node_text, spans
from core.gate import Gated
from core.scope import Splice, growth_limit, prove, selection_problems, splice
from core.text import count_words
from db.manuscript import Chunk, PlanNode
from db.tree import chunks_under, latest_text

REWRITE_TRIES = 3  # answers asked for before the edit fails


class ScopeRefused(Exception):
    """No answer of the model stayed inside the selection: the edit fails with ``E_EDIT_SCOPE``."""


@dataclass
class _Answer:
    key: str
    call_id: int | None
    gated: Gated
    problems: list[str]
    splice: Splice | None = None
    texts: dict[int, str] | None = None


async def rewrite_selection(step: ModelStep, jid: uuid.UUID, edit_id: int, key: str) -> None:
    """Ask, check, retry; then store the chosen answer's chunk texts and proof in the edit's
    ``detail`` (``texts``, ``scope``); ScopeRefused when no answer could be used."""
    async with step.db.job_tx(jid) as tx:
        job = await load_job(tx, jid)
        edit = await load_edit(tx, edit_id)
        if "texts" in edit.detail:
            return
        if edit.detail.get("refused"):
            raise ScopeRefused(str(edit.detail["refused"]))
        node = await tx.session.get(PlanNode, edit.node_id)
        assert node is not None
        chunks = await chunks_under(tx.session, node)
        texts = [(await latest_text(tx.session, c.id)).strip() for c in chunks]
        model, number, params = job.model, edit.number, dict(edit.params or {})
    whole = node_text(texts)
    s, e = int(params["start"]), int(params["end"])
    instruction = str(params.get("instruction") or "")
    ids = [c.id for c in chunks]
    found = spans(texts, s, e)
    first = chunks[found[0].index]
    if len({chunks[sp.index].section_id for sp in found}) > 1:  # refused by the API: never spliced across a heading
        raise ScopeRefused("the selection runs from one section into the next: select within one section")
    words = max(1, count_words(whole[s:e]))
    tries: list[_Answer] = []
    problems: list[str] = []
    chosen: _Answer | None = None
    for n in range(1, REWRITE_TRIES + 1):
        got = await _ask(step, jid, first, ids, key=f"{key}:rewrite:{n}", whole=whole, s=s, e=e,
                         instruction=instruction, words=words, model=model, problems=problems)  # fmt: skip
        got.texts = _cut_back(texts, ids, found, got) if not got.problems else None
        tries.append(got)
        activity.heartbeat(n)
        if not got.problems:
            chosen = got
            break
        problems = got.problems
    if chosen is None:
        why = "; ".join(tries[-1].problems)
        reason = f"no answer of the model stayed inside the selection in {len(tries)} tries (the last: {why})"
        await _settle(step, jid, edit_id, first.id, tries, None, [], number, reason)
        raise ScopeRefused(reason)
    checks: list[tuple[int, list[Verdict]]] = []
    if instruction:
        item = [Item("instruction", instruction)]
        v0 = await verdicts(step.llm, job_id=jid, chunk_id=first.id, model=model, text=chosen.gated.text,
                            items=item, request_key=f"{key}:coverage:0")  # fmt: skip
        checks.append((0, v0))
        if v0[0].verdict == "missing":  # asked once more, told what it left undone
            told = [f"the rewrite does not do what its author asked ({v0[0].why or instruction})"]
            again = await _ask(step, jid, first, ids, key=f"{key}:rewrite:{len(tries) + 1}", whole=whole, s=s, e=e,
                               instruction=instruction, words=words, model=model, problems=told)  # fmt: skip
            tries.append(again)
            if not again.problems:
                again.texts = _cut_back(texts, ids, found, again)
                if again.texts is not None:
                    v1 = await verdicts(step.llm, job_id=jid, chunk_id=first.id, model=model, text=again.gated.text,
                                        items=item, request_key=f"{key}:coverage:1")  # fmt: skip
                    checks.append((1, v1))
                    if v1[0].verdict != "missing":
                        chosen = again
    await _settle(step, jid, edit_id, first.id, tries, chosen, checks, number)


async def _ask(
    step: ModelStep,
    jid: uuid.UUID,
    first: Chunk,
    ids: list[int],
    *,
    key: str,
    whole: str,
    s: int,
    e: int,
    instruction: str,
    words: int,
    model: str,
    problems: list[str],
) -> _Answer:
    """One answer, gated, with what the document already says elsewhere cut (nothing claimed
    yet), and what keeps it from being used."""
    msgs = rewrite_messages(whole[:s], whole[s:e], whole[e:], instruction, words, problems)
    res = await step.llm.complete(
        job_id=jid,
        chunk_id=first.id,
        purpose="rewrite",
        request_key=key,
        model=model,
        messages=msgs,
        max_tokens=max_tokens_for(growth_limit(words) + 10),
    )
    # Echoes of the prompt, template tokens, markup, meta lines go; a selection may end mid-sentence,
    # so the gate's rule for an unfinished ending is the scope check's to apply, not the gate's.
    # The selection's own words may be kept: not an echo of the prompt that shows them.
    echo_of = "\n".join(m["content"] for m in msgs)
    gated = await gate(res.text, prompt=echo_of, source=whole[s:e].strip(), fragment=True)
    async with step.db.job_tx(jid) as tx:
        gated = await taken(tx, gated, free=ids)
    found = selection_problems(gated.text, prefix=whole[:s], old=whole[s:e], suffix=whole[e:], raw=res.text)
    if res.finish_reason == "length":
        found.insert(0, "the answer was cut off at its token limit")
    out = _Answer(key, res.call_id, gated, found)
    if not found:
        out.splice = splice(whole, s, e, gated.text)
        out.problems = prove(whole, out.splice.after, s, e, out.splice.new)
    return out


def _cut_back(texts: list[str], ids: list[int], found: list[Any], got: _Answer) -> dict[int, str] | None:
    """The node's chunks after the splice: the first one the selection covers holds its text
    before the selection, the new text and the last one's text after it; the chunks between are
    emptied. None (and the answer refused) unless they read back as exactly the spliced text."""
    assert got.splice is not None
    a, b = found[0], found[-1]
    new = dict(zip(ids, texts, strict=True))
    new[ids[a.index]] = (texts[a.index][: a.start] + got.splice.new + texts[b.index][b.end :]).strip()
    for sp in found[1:]:
        new[ids[sp.index]] = ""
    if node_text([new[i] for i in ids]) != got.splice.after:
        got.problems = ["the splice does not read back as the text with only the selection changed"]
        return None
    return {str(ids[sp.index]): new[ids[sp.index]] for sp in found}


async def _settle(
    step: ModelStep,
    jid: uuid.UUID,
    edit_id: int,
    chunk_id: int,
    tries: list[_Answer],
    chosen: _Answer | None,
    checks: list[tuple[int, list[Verdict]]],
    number: int,
    refused: str = "",
) -> None:
    """In one transaction: every answer as an attempt of the selection's first chunk (the chosen
    one's marks claimed), the coverage verdicts, and the chosen answer's texts and proof."""
    async with step.db.job_tx(jid) as tx:
        await load_job(tx, jid)
        edit = await load_edit(tx, edit_id)
        if "texts" in edit.detail or edit.detail.get("refused"):
            return
        chunk = await tx.session.get(Chunk, chunk_id)
        assert chunk is not None
        ids = [int(i) for i in edit.detail["before"]]
        current = await latest_text(tx.session, chunk.id)
        for t in tries:
            used = t is chosen
            gated = t.gated
            if used:
                gated = await claim(tx, chunk, chunk.attempts + 1, gated, free=ids)
            why = t.problems or ([] if used else ["another answer was used"])
            after = (t.texts or {}).get(str(chunk_id), current) if used else current
            await store_answer(tx, chunk, kind="rewrite", call_id=t.call_id, gated=gated, text_after=after,
                               used=used, problems=why, edit=number)  # fmt: skip
        tx.event(
            "edit",
            "rewrite",
            {"edit": number, "tries": [{"llm_call_id": t.call_id, "used": t is chosen, "problems": t.problems}
                                       for t in tries]},
        )  # fmt: skip
        if chosen is None:
            note(edit, refused=refused)
            return
        for i, (round_, vs) in enumerate(checks):
            await store_verdicts(tx, vs, node_id=edit.node_id, edit_id=edit.id, round_=round_, chunk=chunk,
                                 version_id=None, final=i == len(checks) - 1)  # fmt: skip
        assert chosen.splice is not None and chosen.texts is not None
        proof = chosen.splice.proof()
        note(edit, texts=chosen.texts, scope=proof)
        tx.event("edit", "scope", {"edit": number, "node": edit.node_id, **_shown(proof)})


def _shown(proof: dict[str, Any]) -> dict[str, Any]:
    """The proof as the event carries it (the selection's text cut at 2,000 characters: its hashes are whole)."""
    return {k: v[:2000] if k.startswith("selection_") and not k.endswith("sha256") else v for k, v in proof.items()}
