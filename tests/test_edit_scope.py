"""Edits that prove their scope, against real Postgres, real Temporal and the scripted model: a
selection rewrite whose answer leaves the selection is refused and asked again (never committed;
out of tries, the edit fails E_EDIT_SCOPE), one that stays is spliced with every byte around it as
it was and the proof in its events; a regenerated passage never starts mid-sentence; an edit's
answer repeating a paragraph the document has is cut and counted; the document's end is never
cut to fit an edit; instructions and key points are checked, and what is missing is a finding."""

from __future__ import annotations

import uuid
from collections import deque
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from activities.edit_scope import scope_held
from core.scope import boundary_problems
from core.text import sha256
from db.counts import word_account
from db.coverage import CoverageCheck
from db.loop import Edit
from db.manuscript import Chunk, ChunkAttempt, ChunkVersion, PlanNode
from db.models import AuditEvent, Document
from testkit import until
from tests.helpers import auth, ended, output, submit, wait

pytestmark = pytest.mark.usefixtures("worker")


async def rows(db, model, *where, order=None):
    async with db.tx() as s:
        q = select(model).where(*where)
        return list((await s.execute(q.order_by(order) if order is not None else q)).scalars().all())


async def events(db, job_id: uuid.UUID, kind: str, action: str | None = None) -> list[AuditEvent]:
    got = await rows(db, AuditEvent, AuditEvent.job_id == job_id, AuditEvent.kind == kind, order=AuditEvent.seq)
    return [e for e in got if action is None or e.action == action]


async def node_text(http, user, job_id, node_id) -> str:
    return (await http.get(f"/v1/jobs/{job_id}/nodes/{node_id}", headers=auth(user))).json()["text"]


async def written(db, client, user, words: int = 1500, **options) -> tuple[uuid.UUID, PlanNode]:
    job_id = await submit(db, client, user, kind="generate", prompt="Salt roads", target_words=words, options=options)
    assert await wait(client, job_id) == "succeeded"
    sections = await rows(db, PlanNode, PlanNode.job_id == job_id, PlanNode.level == "section", order=PlanNode.position)
    return job_id, sections[0]


async def test_a_rewrite_of_the_whole_passage_is_refused_and_asked_again_and_the_rest_proved_untouched(
    db, client, fake, user, http
):
    fake.reset(ratio=(1.0, 1.15))
    job_id, node = await written(db, client, user)
    before = await node_text(http, user, job_id, node.id)
    first = before.split(". ")[0] + "."  # a selection at the node's start, a whole sentence
    fake.set(rewrites=deque(["whole", "meta", "unfinished"]))  # three answers that leave the selection, then prose
    r = await http.post(
        f"/v1/jobs/{job_id}/nodes/{node.id}/rewrite",
        json={"quote": first, "instruction": "say it as a rumour"},
        headers=auth(user),
    )
    assert r.status_code == 202, r.text
    assert (await ended(client, job_id, 1)).startswith("failed")
    edit = (await rows(db, Edit, Edit.job_id == job_id))[0]
    assert edit.status == "failed" and edit.error_code == "E_EDIT_SCOPE" and "3 tries" in edit.reason
    # Nothing committed: no new version of any chunk, no new document; every answer kept as an attempt, all cut.
    assert not await rows(db, ChunkVersion, ChunkVersion.job_id == job_id, ChunkVersion.reason == "rewrite")
    assert [d.version for d in await rows(db, Document, Document.job_id == job_id, Document.role == "output")] == [1]
    tries = await rows(db, ChunkAttempt, ChunkAttempt.job_id == job_id, ChunkAttempt.kind == "rewrite")
    assert len(tries) == 3 and all(any(c["rule"] == "out_of_scope" for c in t.cuts) for t in tries)
    said = (await events(db, job_id, "edit", "rewrite"))[0].data["tries"]
    assert any("repeats text from around" in p for p in said[0]["problems"])
    assert any("talks about the task" in p for p in said[1]["problems"])
    assert any("middle of a sentence" in p for p in said[2]["problems"])
    assert await node_text(http, user, job_id, node.id) == before

    # Once more: the first answer rewrites the whole passage, the second stays inside the selection.
    last = before.rsplit(". ", 1)[-1]  # a selection at the node's end: its last sentence
    fake.set(rewrites=deque(["whole"]))
    r = await http.post(
        f"/v1/jobs/{job_id}/nodes/{node.id}/rewrite",
        json={"quote": last, "instruction": "say it as a rumour"},
        headers=auth(user),
    )
    assert r.status_code == 202, r.text
    assert await ended(client, job_id, 2) == "2"
    now = await node_text(http, user, job_id, node.id)
    s = before.index(last)
    assert now[:s] == before[:s] and last not in now  # every byte before it as it was
    scope = (await events(db, job_id, "edit", "scope"))[-1].data
    assert scope["prefix_sha256"] == sha256(before[:s]) == sha256(now[:s])
    assert scope["suffix_sha256"] == sha256("") and scope["selection_before"] == last
    assert now == before[:s] + scope["selection_after"] and boundary_problems(now) == []
    done = (await events(db, job_id, "edit", "done"))[-1].data
    assert done["scope"]["node"]["held"] and done["scope"]["document"]["unchanged_prefix_chars"] > 0
    attempts = await rows(db, ChunkAttempt, ChunkAttempt.job_id == job_id, ChunkAttempt.kind == "rewrite")
    used = [a for a in attempts if not any(c["rule"] == "out_of_scope" for c in a.cuts)]
    # 3 refused, then: the whole passage again (refused), one inside it (used), and the one retry its
    # ignored instruction earned (inside it too, still ignoring it: not used, the first kept).
    assert len(attempts) == 6 and len(used) == 1 and used[0].words_model > 0
    rep = (await http.get(f"/v1/jobs/{job_id}/coherence", headers=auth(user))).json()
    second = (await rows(db, Edit, Edit.job_id == job_id, Edit.number == 2))[0]
    assert [i["subtype"] for i in rep["items"] if i["edit"] == second.id] == ["instruction_not_followed"]
    # The document changed inside the selection only.
    v1, v2 = await rows(db, Document, Document.job_id == job_id, Document.role == "output", order=Document.version)
    assert v1.text.replace(last, scope["selection_after"]) == v2.text


async def test_a_changed_prefix_or_suffix_is_caught_where_the_rewrite_is_published(db, client, fake, user, http):
    fake.reset(ratio=(1.0, 1.15))
    job_id, node = await written(db, client, user)
    before = await node_text(http, user, job_id, node.id)
    middle = before.split(". ")[1] + "."
    r = await http.post(
        f"/v1/jobs/{job_id}/nodes/{node.id}/rewrite",
        json={"quote": middle, "instruction": "shorter"},
        headers=auth(user),
    )
    assert r.status_code == 202, r.text
    assert await ended(client, job_id, 1) == "2"
    edit = (await rows(db, Edit, Edit.job_id == job_id))[0]
    doc = (await output(db, job_id)).text
    async with db.tx() as s:
        assert (await scope_held(SimpleNamespace(session=s, job_id=job_id), edit, doc))["problems"] == []
    held: dict = {}
    with pytest.raises(_Undo):
        async with db.tx() as s:
            # The node's last chunk changed behind the edit's back (after the selection), the document's end cut:
            chunk = (await s.execute(select(Chunk).where(Chunk.section_id == node.id))).scalars().all()[-1]
            v = (
                (
                    await s.execute(
                        select(ChunkVersion)
                        .where(ChunkVersion.chunk_id == chunk.id)
                        .order_by(ChunkVersion.version.desc())
                    )
                )
                .scalars()
                .first()
            )
            text = v.text + " Extra."
            s.add(
                ChunkVersion(job_id=job_id, chunk_id=chunk.id, version=v.version + 1, reason="edit", text=text,
                             word_count=v.word_count + 1, sha256=sha256(text))
            )  # fmt: skip
            await s.flush()
            held = await scope_held(SimpleNamespace(session=s, job_id=job_id), edit, doc[: doc.rindex(". ") + 1])
            raise _Undo
    assert any("suffix" in p for p in held["problems"]) and any(
        "document changed outside" in p for p in held["problems"]
    )


class _Undo(Exception):
    """Rolls the test's tampering back."""


async def test_a_regenerated_passage_never_starts_mid_sentence(db, client, fake, user, http):
    fake.reset(ratio=(1.0, 1.15))
    job_id, node = await written(db, client, user)
    fragment = "2500 BC) is a complex structure of stone and sand."
    fake.set(plants=[{"sentence": fragment, "nth": fake.state.writes + 1}])
    r = await http.post(f"/v1/jobs/{job_id}/nodes/{node.id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 202, r.text
    assert await ended(client, job_id, 1) == "2"
    now = await node_text(http, user, job_id, node.id)
    assert not now.startswith("2500") and fragment not in now and boundary_problems(now) == []
    attempts = await rows(db, ChunkAttempt, ChunkAttempt.job_id == job_id, ChunkAttempt.attempt_no > 1)
    cuts = [c for a in attempts for c in a.cuts]
    assert [c["text"] for c in cuts if c["rule"] == "mid_sentence_start"] == [fragment]


async def test_an_edit_repeating_a_paragraph_of_the_document_has_it_cut_and_counted(db, client, fake, user, http):
    fake.reset(ratio=(1.0, 1.15))
    job_id, node = await written(db, client, user, words=3000)
    sections = await rows(db, PlanNode, PlanNode.job_id == job_id, PlanNode.level == "section", order=PlanNode.position)
    assert sections[-1].id != node.id
    paragraph = (await node_text(http, user, job_id, sections[-1].id)).split("\n\n")[-1]  # another section's
    fake.set(plants=[{"sentence": paragraph + "\n\n", "nth": fake.state.writes + 1}])
    before = await _account(db, job_id)
    r = await http.post(f"/v1/jobs/{job_id}/nodes/{node.id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 202, r.text
    assert await ended(client, job_id, 1) == "2"
    assert paragraph not in await node_text(http, user, job_id, node.id)
    attempts = await rows(db, ChunkAttempt, ChunkAttempt.job_id == job_id, ChunkAttempt.attempt_no > 1)
    cut = [c for a in attempts for c in a.cuts if c["rule"] == "repeat"]
    assert cut and cut[0]["text"][:60] == paragraph[:60]
    assert all(a.words_model > 0 for a in attempts)  # the edit's model words are counted, as a chunk's are
    after = await _account(db, job_id)
    assert after.words_model > before.words_model
    assert after.cut_by_rule.get("repeat", 0) >= before.cut_by_rule.get("repeat", 0) + cut[0]["words"]


async def _account(db, job_id):
    async with db.tx() as s:
        return await word_account(s, job_id)


async def test_the_documents_end_is_never_cut_to_fit_an_edit(db, client, fake, user, http):
    fake.reset(ratio=(1.0, 1.15))
    job_id, node = await written(db, client, user, words=3000)  # the first of several sections
    v1 = (await output(db, job_id)).text
    ending = v1.rstrip().rsplit("\n\n", 1)[-1]
    assert ending not in await node_text(http, user, job_id, node.id)
    mine = await node_text(http, user, job_id, node.id)
    longer = mine + "\n\n" + " ".join(["The carters sang of salt and weather all the way to the coast."] * 30)
    r = await http.put(f"/v1/jobs/{job_id}/nodes/{node.id}/text", json={"text": longer}, headers=auth(user))
    assert r.status_code == 202, r.text
    assert await ended(client, job_id, 1) == "2"
    v2 = (await output(db, job_id)).text
    assert v2.rstrip().endswith(ending)  # the last section's words are all there
    over = (await events(db, job_id, "edit", "over_max"))[0].data
    assert over["over"] > 0 and over["cut"] == 0 and over["words"] > over["max_words"]
    # A hand edit that stops mid-sentence is refused: a passage never ends mid-sentence.
    r = await http.put(
        f"/v1/jobs/{job_id}/nodes/{node.id}/text", json={"text": mine + " And then the"}, headers=auth(user)
    )
    assert r.status_code == 422 and "middle of a sentence" in r.text


async def test_an_ignored_instruction_is_a_finding_a_followed_one_is_not_and_an_unanswered_one_is_unchecked(
    db, client, fake, user, http
):
    fake.reset(ratio=(1.0, 1.15))
    job_id, node = await written(db, client, user)

    async def regenerate(number: int, instruction: str) -> list[CoverageCheck]:
        r = await http.post(
            f"/v1/jobs/{job_id}/nodes/{node.id}/regenerate", json={"instruction": instruction}, headers=auth(user)
        )
        assert r.status_code == 202, r.text
        assert await ended(client, job_id, number) == str(number + 1)
        edit = (await rows(db, Edit, Edit.job_id == job_id, Edit.number == number))[0]
        return await rows(db, CoverageCheck, CoverageCheck.edit_id == edit.id, order=CoverageCheck.id)

    # Ignored (the scripted model writes what it always writes): the judge says so, one retry is
    # made (a paragraph rewritten to carry it: the model gives it back unchanged, refused), a finding.
    checks = await regenerate(1, "make the ending darker")
    assert [(c.round, c.verdict, c.detector) for c in checks] == [(0, "missing", "judge")] and checks[0].finding_id
    repairs = await rows(db, ChunkAttempt, ChunkAttempt.job_id == job_id, ChunkAttempt.kind == "repair")
    assert len(repairs) == 1 and any(c["rule"] == "out_of_scope" for c in repairs[0].cuts)
    rep = (await http.get(f"/v1/jobs/{job_id}/coherence", headers=auth(user))).json()
    found = [i for i in rep["items"] if i["subtype"] == "instruction_not_followed"]
    assert len(found) == 1 and found[0]["status"] == "open" and "make the ending darker" in found[0]["message"]
    assert rep["coverage"] == {"checked": 1, "covered": 0, "missing": 1, "unchecked": 0}

    # Followed: covered, quoting where; no finding.
    fake.set(comply=True)
    checks = await regenerate(2, "make the ending darker")
    assert [(c.verdict, c.detector) for c in checks] == [("covered", "judge")] and "darker" in checks[0].quote
    assert not checks[0].finding_id

    # A judge that never answers validly: unchecked, never covered, no finding.
    fake.set(comply=False, judge_mode="lying")
    checks = await regenerate(3, "make the ending colder")
    assert [(c.verdict, c.detector) for c in checks] == [("unchecked", "none")] and len(checks[0].llm_call_ids) == 2
    rep = (await http.get(f"/v1/jobs/{job_id}/coherence", headers=auth(user))).json()
    assert rep["coverage"]["unchecked"] == 1 and rep["coverage"]["covered"] == 1


async def test_key_points_added_in_plan_review_are_checked_and_a_missing_one_is_retried_then_a_finding(
    db, client, fake, user, http
):
    point = "The harbour wall was finished in 1847 by Elias Thorne."

    async def reviewed(comply: bool) -> uuid.UUID:
        fake.reset(ratio=(1.0, 1.15), comply=comply)
        job_id = await submit(
            db, client, user, kind="generate", prompt="Harbours", target_words=1500, options={"review_plan": True}
        )

        async def awaiting() -> bool:
            return (await http.get(f"/v1/jobs/{job_id}/plan", headers=auth(user))).json()["awaiting_review"]

        await until("the plan to await its review", awaiting)
        items = (await http.get(f"/v1/jobs/{job_id}/plan", headers=auth(user))).json()["items"]
        items = [{k: v for k, v in i.items() if k != "level"} for i in items]
        items[0]["key_points"] = [*items[0]["key_points"], point]
        r = await http.post(f"/v1/jobs/{job_id}/plan", json={"items": items}, headers=auth(user))
        assert r.status_code == 200, r.text
        assert await wait(client, job_id) == "succeeded"
        return job_id

    # The model never says it: the rule sees the name and the year nowhere, one retry, then a finding.
    job_id = await reviewed(comply=False)
    checks = await rows(db, CoverageCheck, CoverageCheck.job_id == job_id, order=CoverageCheck.id)
    assert [(c.item, c.verdict, c.detector, c.edit_id) for c in checks] == [(point, "missing", "rule", None)]
    rep = (await http.get(f"/v1/jobs/{job_id}/coherence", headers=auth(user))).json()
    found = [i for i in rep["items"] if i["subtype"] == "key_point_not_covered"]
    assert len(found) == 1 and found[0]["contradicts"]["quote"] == point and "not covered" in found[0]["message"]
    assert Elias_not_in(await output(db, job_id))

    # The retry carries it: covered, quoting the sentence; the chunk has a coverage_repair version; no finding.
    job_id = await reviewed(comply=True)
    checks = await rows(db, CoverageCheck, CoverageCheck.job_id == job_id, order=CoverageCheck.id)
    assert [(c.round, c.verdict) for c in checks] == [(0, "missing"), (1, "covered")] and "Elias Thorne" in checks[
        1
    ].quote
    assert await rows(db, ChunkVersion, ChunkVersion.job_id == job_id, ChunkVersion.reason == "coverage_repair")
    assert "Elias Thorne" in (await output(db, job_id)).text
    rep = (await http.get(f"/v1/jobs/{job_id}/coherence", headers=auth(user))).json()
    assert not [i for i in rep["items"] if i["subtype"] == "key_point_not_covered"] and rep["coverage"]["covered"] == 1


def Elias_not_in(doc) -> bool:  # noqa: N802 - reads as the claim it checks
    return "Elias Thorne" not in doc.text
