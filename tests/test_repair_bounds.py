"""Repairs that keep their word, against real Postgres, real Temporal and the scripted model: a
continuity repair or a stitch's bridge never starts or ends a passage mid-sentence (refused, asked
again, and failing that the finding or the broken seam stays open with what was tried); every
word a model wrote for the document is a chunk attempt in the word account, the extension after
a repair too (model words = kept + cut); and finalize says what it cut to the job's maximum."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from sqlalchemy import select

from core.length import WordAccount
from core.scope import boundary_problems, start_problem
from core.text import count_words
from db.counts import word_account
from db.manuscript import Chunk, ChunkAttempt, ChunkVersion, LengthCheck, PlanNode, SeamCheck, StitchResult
from db.models import AuditEvent, LlmCall
from quire.remote import coherence_lines
from tests.helpers import FACT, LIE, _fact, _findings, _lie, _versions, auth, output, submit, wait

pytestmark = pytest.mark.usefixtures("worker")

# The purposes of the calls whose answers become document text (or would have).
PROSE = ("write", "extend", "repair", "stitch", "rewrite", "coverage_repair")


async def _rows(db, model, *where, order=None) -> list:
    async with db.tx() as s:
        q = select(model).where(*where)
        return list((await s.execute(q.order_by(order) if order is not None else q)).scalars().all())


async def _events(db, job_id: uuid.UUID, kind: str, action: str) -> list[dict]:
    got = await _rows(db, AuditEvent, AuditEvent.job_id == job_id, AuditEvent.kind == kind, order=AuditEvent.seq)
    return [e.data for e in got if e.action == action]


async def every_model_word_counted(db, job_id: uuid.UUID) -> WordAccount:
    """Every answer a model gave for the document is one chunk attempt with its words as written
    (kept + cut, each cut said), and the account is their sum: model words = kept + cut."""
    async with db.tx() as s:
        account = await word_account(s, job_id)
    attempts = await _rows(db, ChunkAttempt, ChunkAttempt.job_id == job_id)
    calls = await _rows(db, LlmCall, LlmCall.job_id == job_id, LlmCall.purpose.in_(PROSE), LlmCall.status == "ok")
    legacy = await _rows(db, ChunkVersion, ChunkVersion.job_id == job_id, ChunkVersion.detail.has_key("gate"))
    assert legacy == []  # no words recorded on a version instead of as an attempt
    used = Counter(a.llm_call_id for a in attempts)
    missing = [(c.purpose, c.id) for c in calls if used[c.id] != 1]
    assert missing == [], f"model answers that are not exactly one chunk attempt: {missing}"
    said = {c.id: count_words(c.response or "") for c in calls}
    for a in attempts:
        cut = sum(c["words"] for c in a.cuts)
        assert a.words_model == said[a.llm_call_id] == count_words(a.added_text) + cut, (a.kind, a.attempt_no, a.cuts)
    kept = sum(count_words(a.added_text) for a in attempts)
    assert account.words_model == sum(said.values()) == kept + account.words_cut
    assert account.words_cut == sum(c["words"] for a in attempts for c in a.cuts) == sum(account.cut_by_rule.values())
    return account


# -- continuity repairs keep to sentence boundaries ---------------------------------------------------


async def test_a_repair_that_starts_mid_sentence_is_refused_asked_again_and_the_finding_stays_open(
    db, client, fake, user
):
    # Every rewrite opens with the end of a sentence the paragraph never had: "2500 BC) stood beyond ..."
    fake.reset(ratio=(1.0, 1.15), plants=[_fact(nth=2), _lie(nth=4)], repair_mode="midstart")
    job_id = await submit(db, client, user, kind="generate", prompt="Compass rose", target_words=4_000)
    assert await wait(client, job_id) == "succeeded"
    found = [f for f in await _findings(db, job_id) if LIE in f.quote and f.severity == "major"]
    assert found and all(f.status == "open" and f.repair_version_id is None for f in found)
    assert all("refused" in f.tried and "in the middle of a sentence" in f.tried for f in found), found[0].tried
    versions = await _versions(db, found[0].chunk_id)
    assert "continuity_repair" not in [v.reason for v in versions]  # the passage as written, reported
    doc = await output(db, job_id)
    assert doc is not None and LIE in doc.text
    # Asked again, told why; each answer kept as an attempt, none used (its words all cut, said why).
    prompts = ["\n".join(m["content"] for m in r["body"]["messages"]) for r in fake.requests]
    repairs = [p for p in prompts if "contradicts what the document established earlier" in p]
    assert len(repairs) >= 2 and "Your last rewrite was not used: it closes a () it never opened" in repairs[1]
    tries = await _rows(db, ChunkAttempt, ChunkAttempt.chunk_id == found[0].chunk_id, ChunkAttempt.kind == "repair")
    assert len(tries) == len(repairs) and all(a.added_text == "" for a in tries)
    assert all(any(c["rule"] == "not_used" for c in a.cuts) for a in tries)
    await every_model_word_counted(db, job_id)


async def test_a_repair_refused_once_is_used_when_asked_again_and_starts_on_a_sentence(db, client, fake, user):
    fake.reset(ratio=(1.0, 1.15), plants=[_fact(nth=2), _lie(nth=4)], repair_mode="midstart_once")
    job_id = await submit(db, client, user, kind="generate", prompt="Compass rose", target_words=4_000)
    assert await wait(client, job_id) == "succeeded"
    found = [f for f in await _findings(db, job_id) if LIE in f.quote and f.category == "characters"]
    assert found and found[0].status == "repaired"
    versions = await _versions(db, found[0].chunk_id)
    assert versions[-1].reason == "continuity_repair" and versions[-1].id == found[0].repair_version_id
    assert boundary_problems(versions[-1].text) == [] and LIE not in versions[-1].text
    tries = await _rows(db, ChunkAttempt, ChunkAttempt.chunk_id == found[0].chunk_id, ChunkAttempt.kind == "repair")
    refused, kept = tries[0], tries[1]
    assert refused.added_text == "" and start_problem(refused.cuts[-1]["text"]) is not None  # the fragment, not used
    assert kept.added_text and kept.attempt_no in versions[-1].detail["attempts"]
    await every_model_word_counted(db, job_id)


# -- bridges finish their sentence, or the seam stays broken ------------------------------------------


@pytest.mark.parametrize("bridge_mode", ["", "unfinished", "opens"])
async def test_a_bridge_ends_its_sentence_or_is_refused_and_the_seam_stays_broken(
    db, client, fake, user, http, bridge_mode
):
    # The second chunk's answer ends in a 95-word run-on: a broken seam inside its section.
    fake.reset(ratio=(1.0, 1.15), run_on={2}, bridge_mode=bridge_mode)
    job_id = await submit(
        db, client, user, kind="generate", prompt="Harbour lights", target_words=1500, options={"chunk_words": 300}
    )
    assert await wait(client, job_id) == "succeeded"
    stitched = await _rows(db, StitchResult, StitchResult.job_id == job_id)
    broken = [(r, i) for r in stitched for i in r.issues if i["type"] == "broken_seam"]
    assert broken, "the run-on left a seam broken"
    result, issue = broken[0]
    chunk = issue["chunk"]
    bridged = [r for r in result.repairs if r["type"] == "bridged_seam" and r["chunk"] == chunk]
    refused = [r for r in result.repairs if r["type"] == "bridge_refused" and r["chunk"] == chunk]
    attempts = await _rows(db, ChunkAttempt, ChunkAttempt.job_id == job_id, ChunkAttempt.kind == "repair")
    parts = [e for e in await _events(db, job_id, "chunk", "repair") if e.get("part") == "bridge"]
    versions = [
        v
        for v in await _rows(db, ChunkVersion, ChunkVersion.job_id == job_id, ChunkVersion.reason == "stitch")
        if v.detail.get("attempts")
    ]
    if not bridge_mode:  # the model's own words finish the sentence: used as written, nothing added to them
        assert len(bridged) == 1 and not refused and len(parts) == 1 and parts[0]["used"]
        assert bridged[0]["text"][-1] in ".!?" and len(versions) == 1
        assert versions[0].text.rstrip().endswith(bridged[0]["text"]) and boundary_problems(versions[0].text) == []
    else:  # asked twice, told why; refused both times: no full stop put after them, the seam left broken
        assert not bridged and len(refused) == 1 and versions == []
        why = "ends in the middle of a sentence" if bridge_mode == "unfinished" else "starts a new sentence"
        assert any(why in t for t in refused[0]["tried"]), refused[0]["tried"]
        assert len(parts) == 2 and not any(e["used"] for e in parts) and len(attempts) == 2
        assert all(a.added_text == "" for a in attempts) and attempts[0].cuts[-1]["rule"] == "not_used"
        asked = [r for r in fake.requests if "The passage ends mid-sentence:" in r["body"]["messages"][-1]["content"]]
        assert "Your last answer was not used: it " in asked[1]["body"]["messages"][-1]["content"]
        doc = await output(db, job_id)
        assert doc is not None and "keepers went on counting the." not in doc.text
        said = [e for e in await _events(db, job_id, "stitch", "section") if e.get("bridges_refused")]
        assert len(said) == 1 and said[0]["bridges_refused"][0]["chunk"] == chunk  # the log says so
    # A seam left broken is an open finding, with what was tried, in the report, the page's and the CLI's.
    broken_findings = [f for f in await _findings(db, job_id) if f.subtype == "broken_seam"]
    rep = (await http.get(f"/v1/jobs/{job_id}/coherence", headers=auth(user))).json()
    if not bridge_mode:
        assert broken_findings == [] and rep["broken_seams"] == 0 and "broken seam" not in rep["summary"]
    else:
        assert len(broken_findings) == 1, broken_findings
        f = broken_findings[0]
        assert f.status == "open" and f.severity == "major" and f.repair_version_id is None
        assert f.tried.startswith("2 bridge(s) asked for, each refused: ") and why in f.tried
        assert f.quote == issue["text"] and f.repair_attempts == 2
        assert said[0]["left_broken"] == [f.id]
        item = next(i for i in rep["items"] if i["id"] == f.id)
        assert item["status"] == "open" and item["where"] == "seam" and item["chunk"] == chunk
        assert item["audit_seq"] and why in item["tried"]
        assert rep["broken_seams"] == 1 and rep["open"] >= 1 and rep["by_category"]["style"]["open"] >= 1
        assert "(1 broken seam: text that stops mid-sentence)" in rep["summary"]
        shown = "\n".join(coherence_lines(rep))  # what `quire coherence` prints
        assert f"broken_seam at chunk {chunk + 1}" in shown and "(seam): OPEN (2 bridge(s) asked for" in shown
        final = (await _events(db, job_id, "job", "succeeded"))[0]
        assert final["coherence"]["broken_seams"] == 1
    await every_model_word_counted(db, job_id)


# -- every model word in the account --------------------------------------------------------------------


async def test_the_extension_after_a_repair_is_an_attempt_and_the_account_adds_up(db, client, fake, user):
    # The repair answers with the established sentence alone: the passage falls short and is extended.
    fake.reset(ratio=(1.0, 1.05), plants=[_fact(nth=2), _lie(nth=4)], repair_mode="terse")
    job_id = await submit(db, client, user, kind="generate", prompt="Compass rose", target_words=4_000)
    assert await wait(client, job_id) == "succeeded"
    found = [f for f in await _findings(db, job_id) if LIE in f.quote and f.category == "characters"]
    assert found and found[0].status == "repaired"
    extensions = [e for e in await _events(db, job_id, "chunk", "repair") if e.get("part") == "extension"]
    assert extensions and extensions[0]["used"] and extensions[0]["words_model"] > 0
    version = (await _versions(db, found[0].chunk_id))[-1]
    assert version.reason == "continuity_repair" and extensions[0]["attempt"] in version.detail["attempts"]
    assert boundary_problems(version.text) == []
    account = await every_model_word_counted(db, job_id)
    assert account.cut_by_rule.get("repeat", 0) > 0  # the repair's sentence, which chunk 2 already says


async def test_an_edits_repair_extended_is_in_the_account(db, client, fake, user, http):
    fake.reset(ratio=(1.0, 1.05), plants=[_fact(nth=1)], repair_mode="terse")
    job_id = await submit(db, client, user, kind="generate", prompt="Salt roads", target_words=3000)
    assert await wait(client, job_id) == "succeeded"
    sections = await _rows(
        db, PlanNode, PlanNode.job_id == job_id, PlanNode.level == "section", order=PlanNode.position
    )
    before = await output(db, job_id)
    assert before is not None and FACT in before.text and len(sections) >= 2
    fake.set(plants=[_lie(nth=fake.state.writes + 1)])  # the regenerated chunk contradicts the first
    r = await http.post(f"/v1/jobs/{job_id}/nodes/{sections[-1].id}/regenerate", json={}, headers=auth(user))
    assert r.status_code == 202, r.text
    from tests.helpers import ended

    assert await ended(client, job_id, 1) == "2"
    found = [f for f in await _findings(db, job_id) if LIE in f.quote and f.edit_id is not None]
    assert found and found[0].status == "repaired"
    extensions = [e for e in await _events(db, job_id, "chunk", "repair") if e.get("part") == "extension"]
    assert extensions and extensions[0]["used"] and extensions[0]["edit"] == 1
    await every_model_word_counted(db, job_id)


def test_the_accounts_line_says_junk_apart_from_answers_not_used_and_the_parts_add_up() -> None:
    both = WordAccount(1012, 175, {"repeat": 100, "meta": 35, "not_used": 25, "out_of_scope": 15})
    assert both.words_junk == 135 and both.words_unused == 40 and both.as_dict()["words_unused"] == 40
    assert "175 cut: 135 as junk (repeat 100, meta 35), 40 from answers not used (not_used 25, out_of_scope 15)" in (
        both.describe()
    )
    unused = WordAccount(500, 30, {"not_used": 30})
    assert "30 cut from answers not used (not_used 30), none as junk" in unused.describe()
    assert "cut as junk" not in unused.describe()
    assert "; 12 cut as junk (echo 12)" in WordAccount(90, 12, {"echo": 12}).describe()


async def test_a_jobs_answers_not_used_are_never_called_junk(db, client, fake, user, http):
    # Every repair rewrite starts mid-sentence: refused, asked again, refused; its words all cut, not used.
    fake.reset(ratio=(1.0, 1.15), plants=[_fact(nth=2), _lie(nth=4)], repair_mode="midstart")
    job_id = await submit(db, client, user, kind="generate", prompt="Compass rose", target_words=4_000)
    assert await wait(client, job_id) == "succeeded"
    account = await every_model_word_counted(db, job_id)
    assert account.cut_by_rule.get("not_used", 0) > 0 and account.words_unused == account.cut_by_rule["not_used"]
    assert account.words_junk + account.words_unused == account.words_cut
    shown = (await http.get(f"/v1/jobs/{job_id}", headers=auth(user))).json()["account"]
    succeeded = (await _events(db, job_id, "job", "succeeded"))[0]
    for line in (shown["summary"], succeeded["summary"]):  # the page and `quire status`; the event and webhook
        assert f"from answers not used (not_used {account.words_unused:,})" in line, line
        assert "not_used" not in line.split("from answers not used")[0], line  # never among the junk
        if account.words_junk:
            assert f"{account.words_cut:,} cut: {account.words_junk:,} as junk (" in line, line
        else:
            assert f"{account.words_unused:,} cut from answers not used" in line and "none as junk" in line, line
    assert shown["words_unused"] == succeeded["account"]["words_unused"] == account.words_unused


# -- finalize says what it cut --------------------------------------------------------------------------


async def test_a_document_over_its_maximum_is_cut_and_the_cut_is_recorded_and_shown(db, client, fake, user, http):
    # No overshoot allowed: the chunks' own slack takes the document past its maximum.
    fake.reset(ratio=(1.0, 1.15))
    job_id = await submit(
        db, client, user, kind="generate", prompt="Lighthouses", target_words=1000, options={"max_overshoot": 1.0}
    )
    assert await wait(client, job_id) == "succeeded"
    doc = await output(db, job_id)
    assert doc is not None and doc.word_count == count_words(doc.text) == 1000
    final = [e for e in await _events(db, job_id, "length", "pass") if e.get("scope") == "final"]
    trim = final[-1]["trimmed"]
    assert (
        trim["words_before"] > 1000
        and trim["words_cut"] == trim["words_before"] - 1000 == trim["words_before"] - trim["words_after"]
    )
    assert trim["chunks"] and trim["after"] and doc.text.rstrip().endswith(trim["after"])
    account = await every_model_word_counted(db, job_id)
    assert account.final_words_before == trim["words_before"] and account.final_trimmed == trim["words_cut"]
    assert account.final_words_before - account.final_trimmed == doc.word_count
    assert f"chunk {trim['chunks'][0] + 1}" in account.final_trimmed_at
    succeeded = (await _events(db, job_id, "job", "succeeded"))[0]
    assert succeeded["account"]["final_trimmed"] == trim["words_cut"] and "finalize cut" in succeeded["summary"]
    shown = (await http.get(f"/v1/jobs/{job_id}", headers=auth(user))).json()["account"]
    assert shown["final_trimmed"] == trim["words_cut"]
    assert f"finalize cut the document's last {trim['words_cut']:,} words" in shown["summary"]


# -- a repair that leaves a chunk short is said short ----------------------------------------------------


async def test_a_seam_repair_that_leaves_a_chunk_short_is_checked_and_the_document_still_meets_its_length(
    db, client, fake, user, http
):
    # Chapter 3 (written from a handoff while chapter 2 is slow) contradicts chapter 2; its seam repair
    # answers with the established sentence alone, which chapter 2 already says: the paragraph goes, and
    # the chunk, written to its minimum, falls below it.
    fake.reset(
        ratio=(1.0, 1.02), plants=[_fact(chapter=2), _lie(chapter=3)], chapter_delay={2: 1.0}, repair_mode="terse"
    )
    target = 20_000
    job_id = await submit(
        db, client, user, kind="generate", prompt="Two compasses", target_words=target,
        options={"parallelism": 4, "chunk_words": 1500},
    )  # fmt: skip
    assert await wait(client, job_id) == "succeeded"
    at_seam = [f for f in await _findings(db, job_id) if f.seam_check_id is not None and LIE in f.quote]
    assert at_seam and at_seam[0].status == "repaired"
    repaired = (await _versions(db, at_seam[0].chunk_id))[-1]
    chunk = (await _rows(db, Chunk, Chunk.id == at_seam[0].chunk_id))[0]
    assert repaired.reason == "seam_repair" and repaired.word_count < chunk.min_words
    # Its length check: the repaired version's, failed, the chunk's last; said in the log.
    checks = await _rows(db, LengthCheck, LengthCheck.chunk_id == chunk.id, order=LengthCheck.id)
    assert checks[-1].round == -repaired.version and checks[-1].words == repaired.word_count
    assert not checks[-1].passed and checks[-2].passed  # the written text passed; the repaired one does not
    failed = [e for e in await _events(db, job_id, "length", "fail") if e.get("version") == repaired.version]
    assert [(e["chunk"], e["reason"], e["words"]) for e in failed] == [
        (chunk.ordinal, "seam_repair", repaired.word_count)
    ]
    seams = await _rows(db, SeamCheck, SeamCheck.id == at_seam[0].seam_check_id)
    assert seams[0].status == "repaired"
    # The account counts it short, and says so; the document still has the words asked for.
    account = await every_model_word_counted(db, job_id)
    assert account.chunks_short >= 1
    shown = (await http.get(f"/v1/jobs/{job_id}", headers=auth(user))).json()
    assert shown["account"]["chunks_short"] == account.chunks_short and "accepted short" in shown["account"]["summary"]
    doc = await output(db, job_id)
    assert doc is not None and doc.word_count == count_words(doc.text) >= target and shown["target_met"]
