"""The durable job against a model that writes junk: prompt lines said back, junk tokens and a
paragraph repeated across chapters never enter the document nor count toward its length, and every
chunk event and attempt row says what was cut, why and how many words. The gate's rules:
test_gate.py; the rest of the job: test_job.py."""

from __future__ import annotations

import contextlib
import re
import uuid

import pytest
from sqlalchemy import select, text

from activities.llm import LlmClient
from core.spec import JobSpec
from core.text import count_words
from db.manuscript import ChunkAttempt
from services import jobs
from tests.conftest import TASK_QUEUE, TEST_SECRET
from tests.fake_llm import JUNK_INLINE, JUNK_LINES, REPEATED, WORDS
from tests.helpers import chunk_events, output, scalar, submit, wait
from worker import build_worker

pytestmark = pytest.mark.usefixtures("worker")


def _norm(text: str) -> str:
    return " " + re.sub(r"\W+", " ", text.lower()).strip() + " "


@pytest.mark.parametrize("style", ["instruct", "document"])
async def test_echoed_prompt_lines_and_junk_never_enter_the_document(db, client, fake, user, style):
    """A model that says its prompt back (lines, a paraphrase and a fragment of the request,
    junk tokens) in every answer: the document holds none of it, the count is of what remains,
    and every chunk event names what was cut."""
    fake.reset(mode="echo")
    queue = TASK_QUEUE if style == "instruct" else f"echo-{uuid.uuid4().hex[:6]}"
    async with contextlib.AsyncExitStack() as stack:
        if style == "document":  # the small-model prompt (the demo's): its own worker and queue
            llm = LlmClient(
                db,
                base_url=fake.url,
                api_key=TEST_SECRET,
                model="fake-model",
                timeout=3.0,
                retry_wait_cap=0.05,
                prompt_style="document",
            )
            stack.push_async_callback(llm.close)
            await stack.enter_async_context(build_worker(client, db, llm, queue))
        job, _ = await jobs.submit(
            db,
            client,
            user_id=user.user_id,
            user_name=user.name,
            spec=JobSpec(kind="generate", prompt="Lighthouses", target_words=900, options={"chunk_words": 300}),
            task_queue=queue,
            default_model="fake-model",
        )
        assert await wait(client, job.id) == "succeeded"
    doc = await output(db, job.id)
    assert doc is not None and 900 <= count_words(doc.text) <= 990 and doc.word_count == count_words(doc.text)
    echoed = set(fake.echoed)
    assert any(e.startswith("(Continue from where it stopped") for e in echoed)
    body = _norm(doc.text)
    assert [e for e in echoed if _norm(e) in body] == []
    for junk in ("<start_of_image>", "<end_of_turn>", "1) 2)", "(Continue", "words"):
        assert junk not in doc.text
    async with db.tx() as s:
        events = await chunk_events(s, job.id)
    assert events and all(any(c["text"] == "<start_of_image>" for c in e["cuts"]) for e in events)
    assert all(any(c["text"].startswith("(Continue from where it stopped") for c in e["cuts"]) for e in events)
    assert all(0 <= e["words_added"] <= e["words_model"] and e["words_cut"] > 0 for e in events)


async def test_junk_never_counts_and_a_paragraph_repeated_across_chapters_is_cut_once(db, client, fake, user):
    """A model that mixes issue 18's junk into its prose and opens every answer with the same
    paragraph, in a book of two chapters written in parallel: the document reaches its target
    with the model's real words only, the repeated paragraph is written once, and every chunk
    event and attempt row says what was cut, why and how many words."""
    fake.reset(mode="junk")
    job_id = await submit(db, client, user, kind="generate", prompt="Harbors", target_words=10_100)
    assert await wait(client, job_id) == "succeeded"
    doc = await output(db, job_id)
    assert doc is not None and count_words(doc.text) >= 10_100
    body = " ".join(ln for ln in doc.text.splitlines() if not ln.startswith("#"))
    vocabulary = set(WORDS) | set(re.sub(r"\W+", " ", REPEATED.lower()).split())
    assert set(re.sub(r"\W+", " ", body.lower()).split()) <= vocabulary  # nothing but the model's prose
    for junk in (*JUNK_LINES, *JUNK_INLINE, "penduduk", "grammar book", "A good"):
        assert junk not in doc.text
    async with db.tx() as s:
        written = (
            (
                await s.execute(
                    text("SELECT v.text FROM chunk_versions v WHERE v.job_id = :j AND v.version = 1"), {"j": job_id}
                )
            )
            .scalars()
            .all()
        )
        units = await scalar(db, "SELECT count(*) FROM plan_nodes WHERE job_id = :j AND level = 'chapter'", j=job_id)
        rows = (
            await s.execute(select(ChunkAttempt.words_model, ChunkAttempt.cuts).where(ChunkAttempt.job_id == job_id))
        ).all()
        events = await chunk_events(s, job_id)
    assert units == 2 and len(written) >= 4
    assert sum(t.count(REPEATED) for t in written) == 1  # claimed by one chunk, cut from every other
    # Every other answer had it cut: as a repeat of the document (or an echo, where the prompt showed it).
    assert sum(any(c["text"] == REPEATED for c in cuts) for _, cuts in rows) == len(rows) - 1
    assert any(c["rule"] == "repeat" and c["text"] == REPEATED for _, cuts in rows for c in cuts)
    rules = {c["rule"] for _, cuts in rows for c in cuts}
    assert {"meta", "stray_line", "markup", "glued", "repeat", "unfinished"} <= rules
    assert all(m > 0 for m, _ in rows) and len(events) == len(rows)
    assert sorted(e["words_cut"] for e in events) == sorted(sum(c["words"] for c in cuts) for _, cuts in rows)
