"""The author's loop against real Postgres, real Temporal and the scripted model: a plan reviewed
and edited before writing; a chapter regenerated (old versions kept, both seams checked again, the
chain still provable) beside a locked one that survives it; a hand edit that drops the document
below its target and is extended; a selection rewritten, the rest untouched; a rollback."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError

from core.runs import edit_workflow_id
from core.text import count_words
from db.loop import Edit, PlanVersion, clock_start
from db.manuscript import ChunkVersion, ContinuityFinding, PlanNode, SeamCheck
from db.models import AuditEvent, Document, Job, LlmCall
from testkit import until
from tests.helpers import assert_chain_proven, auth, output, submit, wait
from workflows.job import JobWorkflow, PlanReviewInput

pytestmark = pytest.mark.usefixtures("worker")

FACT = "Captain Mara Quell checked the brass compass on her left wrist."
AGAIN = "Captain Mara Quell turned the brass compass on her left wrist toward the light."
LIE = "Captain Mara Quell checked the silver compass on her right wrist."
ENTITY = {"entity": "Captain Mara Quell", "attribute": "compass"}
BOOK = {"chunk_words": 2500}  # 15,000 words: three chapters of two passages


async def finished(client, job_id: uuid.UUID, number: int) -> int:
    """The document version edit ``number`` made (its workflow's result)."""
    return int(await client.get_workflow_handle(edit_workflow_id(job_id, number)).result())


async def rows(db, model, *where):
    async with db.tx() as s:
        return list((await s.execute(select(model).where(*where))).scalars().all())


async def tile_state(http, user, job_id: uuid.UUID) -> dict[int, str]:
    """Each tile of the book map: its state."""
    m = (await http.get(f"/v1/jobs/{job_id}/map", headers=auth(user))).json()
    return {t["node"]: t["state"] for t in m["tiles"]}


async def chapters(db, job_id: uuid.UUID) -> list[PlanNode]:
    nodes = await rows(db, PlanNode, PlanNode.job_id == job_id, PlanNode.level == "chapter")
    return sorted(nodes, key=lambda n: n.position)


async def versions_of(db, chapter: PlanNode) -> dict[int, list[str]]:
    """Each chunk of a chapter (its first is its section's first) with the reasons of its versions."""
    from db.manuscript import Chunk

    chunks = await rows(db, Chunk, Chunk.unit_id == chapter.id)
    out = {}
    for c in sorted(chunks, key=lambda c: c.ordinal):
        vs = await rows(db, ChunkVersion, ChunkVersion.chunk_id == c.id)
        out[c.id] = [v.reason for v in sorted(vs, key=lambda v: v.version)]
    return out


async def test_a_reviewed_plan_is_written_as_its_author_edited_it(db, client, fake, user, http):
    fake.reset(ratio=(1.0, 1.15))
    job_id = await submit(
        db, client, user, kind="generate", prompt="Harbours", target_words=15_000, options={**BOOK, "review_plan": True}
    )

    async def awaiting() -> bool:
        return (await http.get(f"/v1/jobs/{job_id}/plan", headers=auth(user))).json()["awaiting_review"]

    await until("the plan to await its review", awaiting)
    plan = (await http.get(f"/v1/jobs/{job_id}/plan", headers=auth(user))).json()
    one, two, three = plan["items"]
    assert [v["status"] for v in plan["versions"]] == ["planned"] and len(plan["items"]) == 3

    # Budgets that do not reach the target: a 422 from the API, and the workflow's validator refuses too.
    short = {"items": [{**one, "budget_words": 1000}, {**three}]}
    short["items"] = [{k: v for k, v in i.items() if k != "level"} for i in short["items"]]
    r = await http.post(f"/v1/jobs/{job_id}/plan", json=short, headers=auth(user))
    assert r.status_code == 422 and "less than the job's target of 15,000" in r.text
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await client.get_workflow_handle(f"job-{job_id}").execute_update(
            JobWorkflow.review_plan, PlanReviewInput(2, [10, 10])
        )
    assert "less than the target" in str(refused.value.cause)

    # Edited: the first chapter retitled and given more words, the second removed, one added at the end.
    edited = {
        "items": [
            {"node": one["node"], "title": "The Breakwater", "summary": one["summary"], "budget_words": 6000},
            {k: v for k, v in three.items() if k != "level"},
            {"title": "The Keeper's Log", "summary": "A keeper's log, night by night.", "budget_words": 4000},
        ]
    }
    r = await http.post(f"/v1/jobs/{job_id}/plan", json=edited, headers=auth(user))
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    assert await wait(client, job_id) == "succeeded"

    doc = (await output(db, job_id)).text
    heads = re.findall(r"^## (.+)$", doc, re.M)
    assert heads == ["The Breakwater", three["title"], "The Keeper's Log"] and two["title"] not in heads
    assert count_words(doc) >= 15_000
    chs = await chapters(db, job_id)
    assert [c.budget_words for c in chs] == [6000, three["budget_words"], 4000]
    pv = await rows(db, PlanVersion, PlanVersion.job_id == job_id)
    assert [(v.version, v.status) for v in sorted(pv, key=lambda v: v.version)] == [(1, "planned"), (2, "approved")]
    kinds = {c["change"] for c in next(v for v in pv if v.version == 2).changes}
    assert {"title", "budget_words", "removed", "added"} <= kinds
    events = await rows(db, AuditEvent, AuditEvent.job_id == job_id, AuditEvent.kind.in_(["plan", "workflow", "user"]))
    reviewed = next(e for e in events if e.kind == "plan" and e.action == "reviewed")
    assert reviewed.data["by"] == user.name and any(c["change"] == "removed" for c in reviewed.data["changes"])
    assert any(e.kind == "workflow" and e.action == "update" and "refused" in e.data for e in events)
    await assert_chain_proven(db, job_id)
    # The time the plan waited for its author is not the job's: its time budget counts without it.
    v1, v2 = sorted(pv, key=lambda v: v.version)
    async with db.tx() as s:
        job = await s.get(Job, job_id)
        assert await clock_start(s, job) - job.started_at == v2.decided_at - v1.created_at > dt.timedelta(0)


async def test_a_regenerated_chapter_keeps_the_old_and_a_locked_neighbour_survives(db, client, fake, user, http):
    fake.reset(
        ratio=(1.0, 1.15),
        plants=[{"sentence": FACT, "value": "brass compass on her left wrist", **ENTITY, "chapter": 2},
                {"sentence": AGAIN, "value": "brass compass on her left wrist", **ENTITY, "chapter": 3}],
    )  # fmt: skip
    job_id = await submit(db, client, user, kind="generate", prompt="Compass rose", target_words=15_000, options=BOOK)
    assert await wait(client, job_id) == "succeeded"
    one, two, three = await chapters(db, job_id)
    v1 = (await output(db, job_id)).text
    assert FACT in v1

    # The third chapter locked: regenerating it is a 409 that names the lock; so is its part of a repair.
    r = await http.put(f"/v1/jobs/{job_id}/nodes/{three.id}/lock", headers=auth(user))
    assert r.status_code == 200 and r.json()["locked"] and r.json()["locked_by"] == user.name
    r = await http.post(f"/v1/jobs/{job_id}/nodes/{three.id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 409 and "is locked" in r.json()["detail"] and user.name in r.json()["detail"]
    assert f"`quire unlock {job_id} {three.id}`" in r.json()["detail"]  # what to run, not only the HTTP call
    three_before = await versions_of(db, three)
    two_before = await versions_of(db, two)

    # The second chapter regenerated: its first passage now says otherwise about the captain.
    fake.set(
        plants=[{"sentence": LIE, "value": "silver compass on her right wrist", **ENTITY, "nth": fake.state.writes + 1}]
    )
    r = await http.post(
        f"/v1/jobs/{job_id}/nodes/{two.id}/regenerate",
        json={"instruction": "make the ending darker"},
        headers=auth(user),
    )
    assert r.status_code == 202, r.text
    assert r.json()["number"] == 1
    assert await finished(client, job_id, 1) == 2
    assert (await tile_state(http, user, job_id))[two.id] == "regenerated"

    # Old versions kept, new ones made by the edit; the locked chapter untouched.
    after = await versions_of(db, two)
    assert all(
        after[c][: len(two_before[c])] == two_before[c] and after[c][len(two_before[c])] == "regenerate" for c in after
    )
    assert await versions_of(db, three) == three_before
    # Both seams checked again, as rows of the edit's; the one before the locked chapter could not be repaired.
    edit = (await rows(db, Edit, Edit.job_id == job_id))[0]
    seams = {s.unit_id: s for s in await rows(db, SeamCheck, SeamCheck.edit_id == edit.id)}
    assert set(seams) == {two.id, three.id}
    assert seams[three.id].status == "flagged" and not seams[three.id].validated
    found = await rows(db, ContinuityFinding, ContinuityFinding.edit_id == edit.id)
    at_seam = [f for f in found if f.seam_check_id == seams[three.id].id and f.severity == "major"]
    assert at_seam and all(f.status == "open" and AGAIN in f.quote and LIE in f.quote_there for f in at_seam)
    relied = [f for f in found if f.subtype == "relied_on_changed"]
    assert relied and all(f.status == "open" and "Mara Quell" in f.quote for f in relied)
    rep = (await http.get(f"/v1/jobs/{job_id}/coherence", headers=auth(user))).json()
    assert rep["relied_on_changed"] >= 1 and any(i["subtype"] == "relied_on_changed" for i in rep["items"])

    # A new version of the document; the first still there; the diff between them; the chain provable.
    v2 = (await http.get(f"/v1/jobs/{job_id}/output", headers=auth(user))).text
    assert LIE in v2 and FACT not in v2 and count_words(v2) >= 15_000
    old = await http.get(f"/v1/jobs/{job_id}/output?version=1", headers=auth(user))
    assert old.text == v1
    d = (await http.get(f"/v1/jobs/{job_id}/diff?from=1&to=2", headers=auth(user))).json()
    assert f"+{LIE}" in d["diff"].replace("\n+", "\n+") or LIE in d["diff"]
    await assert_chain_proven(db, job_id)
    verdict = (await http.get(f"/v1/jobs/{job_id}/audit/verify", headers=auth(user))).json()
    assert verdict["intact"], verdict
    done = next(
        e
        for e in await rows(db, AuditEvent, AuditEvent.job_id == job_id, AuditEvent.kind == "edit")
        if e.action == "done"
    )
    assert done.data["by"] == user.name and done.data["document_version"] == {"before": 1, "after": 2}
    assert done.data["llm_calls"] > 0 and done.data["chunks"]

    # Unlocked, the same change repairs the third chapter's opening at the seam instead.
    assert (await http.delete(f"/v1/jobs/{job_id}/nodes/{three.id}/lock", headers=auth(user))).json()["locked"] is False
    r = await http.post(f"/v1/jobs/{job_id}/nodes/{two.id}/rollback", json={"to": 0}, headers=auth(user))
    assert r.status_code == 202, r.text
    assert await finished(client, job_id, 2) == 3
    assert FACT in (await http.get(f"/v1/jobs/{job_id}/output", headers=auth(user))).text
    await assert_chain_proven(db, job_id)
    # Rolled back to what the job wrote, the chapter reads as written, not regenerated, on the map.
    assert (await tile_state(http, user, job_id))[two.id] == "done"
    # The timeline draws a chapter from when its writing began: its first model call, which comes
    # before its first saved attempt.
    tiles = {t["node"]: t for t in (await http.get(f"/v1/jobs/{job_id}/map", headers=auth(user))).json()["tiles"]}
    from db.manuscript import Chunk, ChunkAttempt

    for chapter in (one, two):
        ids = [c.id for c in await rows(db, Chunk, Chunk.unit_id == chapter.id)]
        calls = await rows(db, LlmCall, LlmCall.chunk_id.in_(ids))
        attempts = await rows(db, ChunkAttempt, ChunkAttempt.chunk_id.in_(ids))
        began = dt.datetime.fromisoformat(tiles[chapter.id]["started_at"])
        assert began == min(c.started_at for c in calls) < min(a.created_at for a in attempts)


async def test_a_hand_edit_below_the_target_is_extended_and_a_selection_rewritten(db, client, fake, user, http):
    fake.reset(ratio=(1.0, 1.15))
    job_id = await submit(db, client, user, kind="generate", prompt="Salt roads", target_words=1500)
    assert await wait(client, job_id) == "succeeded"
    sections = await rows(db, PlanNode, PlanNode.job_id == job_id, PlanNode.level == "section")
    node = sections[0]
    mine = "The salt road ran west from the marsh. Carters called it the white mile.\n\nNobody paid the toll twice."
    r = await http.put(
        f"/v1/jobs/{job_id}/nodes/{node.id}/text", json={"text": "# A heading\n\n" + mine}, headers=auth(user)
    )
    assert r.status_code == 422 and "heading" in r.text
    r = await http.put(f"/v1/jobs/{job_id}/nodes/{node.id}/text", json={"text": mine}, headers=auth(user))
    assert r.status_code == 202, r.text
    assert await finished(client, job_id, 1) == 2
    doc = (await output(db, job_id)).text
    assert "white mile" in doc and count_words(doc) >= 1500  # extended past the hand edit to the target
    edit = (await rows(db, Edit, Edit.job_id == job_id))[0]
    assert edit.status == "done" and edit.detail.get("top_ups", 0) >= 1
    await assert_chain_proven(db, job_id)

    # A selection rewritten: the rest of the node's text untouched.
    before = (await http.get(f"/v1/jobs/{job_id}/nodes/{node.id}", headers=auth(user))).json()["text"]
    r = await http.post(
        f"/v1/jobs/{job_id}/nodes/{node.id}/rewrite",
        json={"quote": "Nobody paid the toll twice.", "instruction": "say it as a rumour"},
        headers=auth(user),
    )
    assert r.status_code == 202, r.text
    assert await finished(client, job_id, 2) == 3
    now = (await http.get(f"/v1/jobs/{job_id}/nodes/{node.id}", headers=auth(user))).json()["text"]
    assert "Nobody paid the toll twice." not in now
    assert now.startswith(before[: before.index("Nobody")]) and now.endswith(before[before.index("twice.") + 6 :])
    docs = await rows(db, Document, Document.job_id == job_id, Document.role == "output")
    assert sorted(d.version for d in docs) == [1, 2, 3]


async def test_while_a_job_writes_its_card_its_map_and_the_history_count_the_same_words(db, client, fake, user, http):
    from db.manuscript import Chunk

    fake.reset(ratio=(0.3, 0.6), delay_s=1.0)  # every call a second: a passage stays between attempts a while
    job_id = await submit(db, client, user, kind="generate", prompt="Slow tides", target_words=600)

    async def between_attempts() -> bool:
        cs = await rows(db, Chunk, Chunk.job_id == job_id)
        return any(c.status == "writing" and c.word_count > 0 for c in cs) and all(c.status != "done" for c in cs)

    await until("a passage's first attempt saved, the passage not committed", between_attempts, 60)
    card = (await http.get(f"/v1/jobs/{job_id}", headers=auth(user))).json()["words_written"]
    listed = (await http.get("/v1/jobs", headers=auth(user))).json()["items"]
    history = next(j for j in listed if j["id"] == str(job_id))["words_written"]
    tiles = (await http.get(f"/v1/jobs/{job_id}/map", headers=auth(user))).json()["tiles"]
    assert card == history == sum(t["words"] for t in tiles) == 0  # nothing committed to the document yet
    assert await wait(client, job_id) == "succeeded"


async def test_an_estimate_lands_within_a_quarter_of_what_the_job_used(db, client, fake, user, http):
    fake.reset()  # a model that writes 30-60% of what it is asked: extensions, as small models need
    opts = {"chunk_words": 1500}
    spec = {"kind": "generate", "prompt": "Lighthouses of the north", "target_words": 60_000, "options": opts}
    cold = (await http.post("/v1/jobs/estimate", json=spec, headers=auth(user))).json()
    # One finished job of the model to learn from (the user's own come first).
    first = await submit(db, client, user, kind="generate", prompt="Tide tables", target_words=20_000, options=opts)
    assert await wait(client, first) == "succeeded"
    est = (await http.post("/v1/jobs/estimate", json=spec, headers=auth(user))).json()
    assert est["basis"] == "history" and est["jobs_measured"] == 1 and 0 < est["compliance"] < 1
    assert est["by_purpose"]["memory"]["calls"] > 0 and 0 < est["memory_share"] < 1
    assert est["cost"]["priced"] is False  # no QUIRE_PRICES in the test API
    job_id = await submit(db, client, user, **spec)
    assert await wait(client, job_id) == "succeeded"
    seen = (await http.get(f"/v1/jobs/{job_id}/estimate", headers=auth(user))).json()
    actual = seen["actual"]
    assert seen["estimate"]["calls"] == est["calls"]  # as it was made before the job ran
    for k in ("calls", "tokens_in", "tokens_out"):
        expected = est[k]["expected"]
        assert abs(actual[k] - expected) <= 0.25 * actual[k], (k, expected, actual[k], actual["by_purpose"])
        assert est[k]["low"] <= actual[k] <= est[k]["high"], (k, est[k], actual[k])
    # Without history the defaults answer, with a wide range that says so.
    assert cold["basis"] in ("defaults", "history") and cold["calls"]["high"] > cold["calls"]["low"]


async def test_actions_that_make_no_sense_are_refused_and_say_why(db, client, fake, user, http):
    from db.manuscript import Chunk
    from tests.helpers import set_quotas

    fake.reset(ratio=(1.0, 1.15))
    done = await submit(db, client, user, kind="generate", prompt="Ropes", target_words=400)
    assert await wait(client, done) == "succeeded"
    book = (await rows(db, PlanNode, PlanNode.job_id == done, PlanNode.level == "book"))[0]
    section = (await rows(db, PlanNode, PlanNode.job_id == done, PlanNode.level == "section"))[0]
    url = f"/v1/jobs/{done}/nodes"
    r = await http.post(f"{url}/999999999/regenerate", json={}, headers=auth(user))
    assert r.status_code == 404 and "has no node 999999999" in r.json()["detail"]
    r = await http.post(f"{url}/{book.id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 409 and "whole book" in r.json()["detail"]
    r = await http.post(f"{url}/{section.id}/rollback", json={"to": 7}, headers=auth(user))
    assert r.status_code == 404 and "no version 7" in r.json()["detail"]
    r = await http.post(f"{url}/{section.id}/rewrite", json={"instruction": "x", "quote": "zz qq"}, headers=auth(user))
    assert r.status_code == 422 and "not in the node's text" in r.text
    r = await http.post(f"/v1/jobs/{done}/plan", json={}, headers=auth(user))
    assert r.status_code == 409 and "did not ask for a plan review" in r.json()["detail"]
    await set_quotas(db, user, words_per_month=500)  # the job's 400 words are used: 100 left
    r = await http.post(f"{url}/{section.id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 429 and "words-per-month quota of 500" in r.json()["detail"] and r.headers["retry-after"]
    await set_quotas(db, user, words_per_month=None)

    # A running job's nodes are not edited, nor locked before they are written; a cancelled job's not at all.
    fake.reset(ratio=(1.0, 1.15), delay_s=0.3)
    running = await submit(db, client, user, kind="generate", prompt="Knots", target_words=3000)

    async def planned() -> bool:
        return bool(await rows(db, Chunk, Chunk.job_id == running))

    await until("the running job's plan", planned)
    node = (await rows(db, PlanNode, PlanNode.job_id == running, PlanNode.level == "section"))[-1]
    r = await http.post(f"/v1/jobs/{running}/nodes/{node.id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 409 and "job is running" in r.json()["detail"]
    r = await http.put(f"/v1/jobs/{running}/nodes/{node.id}/lock", headers=auth(user))
    assert r.status_code == 409 and "not written yet" in r.json()["detail"]
    await http.post(f"/v1/jobs/{running}/cancel", headers=auth(user))
    await wait(client, running)
    r = await http.post(f"/v1/jobs/{running}/nodes/{node.id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    assert not await rows(db, Edit, Edit.job_id.in_([done, running]))  # nothing was started


async def test_the_loop_from_the_command_line(db, client, fake, user, api_url):
    from tests.helpers import arun

    fake.reset(ratio=(1.0, 1.15))
    env = {"QUIRE_API_URL": api_url, "QUIRE_API_KEY": user.api_key, "QUIRE_HOME": "/nonexistent"}
    code, out, _ = await arun("submit", "Canal locks", "--words", "1500", "--estimate", env=env)
    assert code == 0 and "model calls" in out and "tokens in" in out and "wall time" in out
    assert not await rows(db, Job, Job.user_id == user.user_id)  # an estimate submits nothing
    code, out, _ = await arun("submit", "Canal locks", "--words", "1500", "--review-plan", env=env)
    job_id = uuid.UUID(out.strip())

    async def awaiting() -> bool:
        return bool(await rows(db, PlanVersion, PlanVersion.job_id == job_id))

    await until("the plan to await its review", awaiting)
    code, out, err = await arun("plan", str(job_id), "--approve", env=env)
    assert code == 0 and "plan version 2 approved" in out, err
    assert await wait(client, job_id) == "succeeded"
    node = (await rows(db, PlanNode, PlanNode.job_id == job_id, PlanNode.level == "section"))[0]
    code, out, err = await arun("lock", str(job_id), str(node.id), env=env)
    assert code == 0 and "locked by" in out
    code, _, err = await arun("regenerate", str(job_id), str(node.id), env=env)
    assert code == 2 and "is locked" in err  # refused by the API: exit 2 with its reason
    await arun("unlock", str(job_id), str(node.id), env=env)
    code, out, err = await arun("regenerate", str(job_id), str(node.id), "--instruction", "shorter", "--wait", env=env)
    assert code == 0 and "edit 1 done: document version 2" in out, err
    code, out, _ = await arun("versions", str(job_id), env=env)
    assert "v1" in out and "v2" in out and f"edit 1 (regenerate by {user.name})" in out
    code, out, _ = await arun("diff", str(job_id), "1", "2", env=env)
    assert code == 0 and out.startswith("--- version 1\n+++ version 2")
