"""Whether a text carries what its author asked (``core.coverage``), asked of the rules and the
judge, and stored (``activities.coverage`` decides when, and retries): one ``coverage_checks`` row
per item and round, a ``coverage checked`` event, and for what is still missing after the one
retry a finding of its own kind (``key_point_not_covered``, ``instruction_not_followed``: open,
quoting what was asked) in the coherence report and on the page.

The judge's answer is structured and validated (a ``covered`` verdict quotes the text word for
word); an invalid one is asked again once, told what was wrong; an item still without a valid
answer is ``unchecked``. A small base model (prompt style ``document``) has no judge: the rules
decide alone where they can, the rest is ``unchecked``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from activities.edit_prompts import coverage_messages
from activities.llm import LlmClient
from activities.memory import finding_events
from core.coverage import SUBTYPES, Item, Verdict, by_rule, judged, merge, windows
from db.coverage import CoverageCheck
from db.manuscript import Chunk, ContinuityFinding
from db.session import JobTx

JUDGE_TRIES = 2  # an invalid answer is asked again once, told what was wrong


async def verdicts(
    llm: LlmClient,
    *,
    job_id: uuid.UUID,
    chunk_id: int | None,
    model: str,
    text: str,
    items: Sequence[Item],
    request_key: str,
) -> list[Verdict]:
    """A verdict for each of ``items`` on ``text``: the rules' where they decide, else the judge's."""
    out: dict[int, Verdict] = {}
    ask: list[int] = []
    for i, it in enumerate(items):
        v = by_rule(it, text)
        if v is None:
            ask.append(i)
        else:
            out[i] = v
    if ask:
        sub = [items[i] for i in ask]
        if llm.prompt_style == "document":
            got = [Verdict(it, "unchecked", "none", why="the model is a base model: no judge asked") for it in sub]
        else:
            got = await _judge(llm, job_id=job_id, chunk_id=chunk_id, model=model, text=text, items=sub,
                               key=request_key)  # fmt: skip
        out.update(zip(ask, got, strict=True))
    return [out[i] for i in range(len(items))]


async def _judge(
    llm: LlmClient, *, job_id: uuid.UUID, chunk_id: int | None, model: str, text: str, items: list[Item], key: str
) -> list[Verdict]:
    """The judge, window by window of a long text, each answer validated and asked again once."""
    per_window: list[dict[int, Verdict]] = []
    calls: list[int] = []
    for w, window in enumerate(windows(text)):
        got: dict[int, Verdict] = {}
        error: str | None = None
        for attempt in range(1, JUDGE_TRIES + 1):
            res = await llm.complete(
                job_id=job_id,
                chunk_id=chunk_id,
                purpose="coverage",
                request_key=f"{key}:w{w}:{attempt}",
                model=llm.judge_model or model,
                messages=coverage_messages(window, items, error),
                max_tokens=160 + 120 * len(items),
                temperature=0.0,
                json_mode=True,
            )
            calls.append(res.call_id)
            found, errors = judged(res.text, items, window)
            for k, v in found.items():
                got.setdefault(k, v)
            if len(got) == len(items):
                break
            error = "; ".join(errors)
        per_window.append(got)
        if len(got) == len(items) and all(v.verdict == "covered" for v in got.values()):
            break  # nothing left for the windows after it to find
    out = merge(per_window, items)
    for v in out:
        if v.detector == "judge" or v.detector == "none":
            v.llm_call_ids = list(calls)
    return out


async def store_verdicts(
    tx: JobTx,
    verdicts_: Sequence[Verdict],
    *,
    node_id: int,
    edit_id: int | None,
    round_: int,
    chunk: Chunk,
    version_id: int | None,
    final: bool,
    note: str = "",
) -> dict[str, int]:
    """The verdicts' rows, their event, and (``final``: no retry follows) a finding for each item
    still missing, on ``chunk``. ``note``: why no retry followed, said in the findings."""
    findings: list[ContinuityFinding] = []
    rows: list[CoverageCheck] = []
    for v in verdicts_:
        finding = None
        if final and v.verdict == "missing":
            what = "key point not covered" if v.item.source == "key_point" else "instruction not followed"
            finding = ContinuityFinding(
                job_id=tx.job_id,
                chunk_id=chunk.id,
                chunk_version_id=version_id,
                category="plot",
                subtype=SUBTYPES[v.item.source],
                severity="minor",
                detector=f"{v.detector}:coverage",
                message=f"{what}: “{v.item.text[:300]}”" + (f" ({v.why[:300]})" if v.why else "") + note,
                quote="",
                quote_there=v.item.text[:1000],
                llm_call_id=v.llm_call_ids[-1] if v.llm_call_ids and v.detector == "judge" else None,
                status="open",
                edit_id=edit_id,
            )
            findings.append(finding)
        rows.append(
            CoverageCheck(
                job_id=tx.job_id,
                node_id=node_id,
                edit_id=edit_id,
                round=round_,
                source=v.item.source,
                item=v.item.text,
                verdict=v.verdict,
                detector=v.detector,
                quote=v.quote,
                why=v.why,
                llm_call_ids=v.llm_call_ids,
            )
        )
    tx.session.add_all(findings)
    await tx.session.flush()
    for row, v in zip(rows, verdicts_, strict=True):
        f = next((f for f in findings if f.quote_there == v.item.text[:1000]), None) if v.verdict == "missing" else None
        row.finding_id = f.id if f is not None else None
    tx.session.add_all(rows)
    await tx.session.flush()
    finding_events(tx, findings, chunk, "coverage")
    counts = {k: sum(1 for v in verdicts_ if v.verdict == k) for k in ("covered", "missing", "unchecked")}
    tx.event(
        "coverage",
        "checked",
        {
            "node": node_id,
            "edit": edit_id,
            "round": round_,
            **counts,
            "items": [
                v.record() | {"check": r.id, "finding": r.finding_id} for v, r in zip(verdicts_, rows, strict=True)
            ],
            "final": final,
        },
    )
    return counts
