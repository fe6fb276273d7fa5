"""The degeneration gate (core.gate): junk is cut and recorded, real prose is never touched."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest
from sqlalchemy import select, text

from activities import gating
from core.gate import Gated, gate
from core.plan import PlanModel, clean_title, title_of_brief
from core.repeats import drop_repeats, fingerprint, fingerprints, near_share, runs
from core.sentences import sentences
from core.spec import JobSpec
from core.text import count_words, paragraphs
from db.manuscript import Chunk
from tests.helpers import job_row, output, submit, wait

FIXTURES = Path(__file__).parent / "fixtures"
PROSE = sorted((FIXTURES / "prose").glob("*.txt"))
MARKED = re.compile(r"⟦(.*?)⟧", re.S)


def junk_cases() -> list[tuple[str, str, str]]:
    """(rule, prompt, answer with ⟦junk⟧ marked) from tests/fixtures/junk.txt."""
    lines = (FIXTURES / "junk.txt").read_text().splitlines()
    body = "\n".join(ln for ln in lines if not ln.startswith("# ") and ln != "#")
    out = []
    for m in re.finditer(r"^== (\w+)\n(.*?)(?=^== |\Z)", body, re.M | re.S):
        case, prompt = m.group(2).strip(), ""
        if case.startswith("» "):
            first, _, case = case.partition("\n")
            prompt = first[2:].replace("\\n", "\n")
        out.append((m.group(1), prompt, case.strip()))
    return out


def squash(text: str) -> str:
    """Text with its spacing made one (a cut leaves spaces, or none before a comma)."""
    return re.sub(r"\s+([.,;:!?])", r"\1", " ".join(text.split()))


def test_the_fixtures_are_real_and_sizeable() -> None:
    assert len(PROSE) >= 6 and sum(count_words(p.read_text()) for p in PROSE) >= 5000
    assert len(junk_cases()) >= 10


@pytest.mark.parametrize("path", PROSE, ids=lambda p: p.stem)
def test_real_prose_loses_nothing(path: Path) -> None:
    """Public-domain prose (dialogue, anaphora, lists, numbers, quoted foreign words) passes whole:
    not a word cut, as one answer and continued paragraph by paragraph."""
    text = path.read_text()
    out = gate(text)
    assert out.cuts == [] and count_words(out.text) == count_words(text)
    paras = [p for p in text.split("\n\n") if p.strip()]
    before = ""
    for para in paras:  # as a model continuing the text one paragraph at a time
        assert gate(para, before=before).cuts == [], para
        before += "\n\n" + para


def test_real_prose_is_not_a_repeat_of_itself_across_the_books() -> None:
    """Not a paragraph or sentence of one book is in another, nor a paragraph with a few words
    changed: each book passes whole against the marks of all the others (shingles included)."""
    marks = [m.fingerprint for p in PROSE for m in fingerprints(p.read_text()) if m.kind != "shingle"]
    assert len(marks) == len(set(marks)) > 250
    for path in PROSE:
        others = {m.fingerprint for p in PROSE if p != path for m in fingerprints(p.read_text())}
        text = path.read_text()
        assert len(others) > 1500 and drop_repeats(text, others) == ("\n\n".join(paragraphs(text)), [])


TITLE_PROMPT = (
    "# My allotment year\n\nA year on plot 34, month by month.\n\n(Continue from where it stops, with about 300 words.)"
)


def test_real_prose_naming_its_title_with_numbers_loses_nothing() -> None:
    """The title in real sentences, quoted as a book's title, beside dates and measures, stays:
    only a line of the title and numbers and no sentence is a title line."""
    text = (FIXTURES / "prose" / "allotment.txt").read_text()
    assert "My allotment year began on 3 March 2021" in text and '"My Allotment Year" (2019)' in text
    assert gate(text, prompt=TITLE_PROMPT).cuts == []
    assert [c.rule for c in gate(f"{text}\n\nMy allotment year 2021 plot 34", prompt=TITLE_PROMPT).cuts] == [
        "title_line"
    ]


def test_a_paragraph_said_again_with_a_few_words_changed_is_cut_across_the_document() -> None:
    """Shingles, not exact match: a paragraph of another chapter said again with words changed,
    added and dropped is a near repeat; one on the same subject in its own words is not."""
    first = (
        "The hive stands at the bottom of the garden, under the old apple tree, where the morning sun "
        "reaches the entrance early and the workers are out on the clover before the dew has dried on the lawn."
    )
    again = (
        "The hive stands at the bottom of the garden under the old apple tree, where the morning sun reaches "
        "its entrance early and the workers are out on the clover long before the dew has dried on the grass."
    )
    own = (
        "Our second hive sits by the compost heap, facing east, so that the bees warm up early; its workers "
        "take the lime trees along the lane in July and leave the clover to the first colony."
    )
    taken = {m.fingerprint for m in fingerprints(first)}
    assert fingerprint("paragraph", again) not in taken  # not the same words: no exact repeat
    text, cuts = drop_repeats(f"{again}\n\n{own}", taken)
    assert text == own and [(c.rule, c.words) for c in cuts] == [("near_repeat", count_words(again))]
    assert near_share(own, runs(first)) < 0.2 and near_share(again, runs(first)) > 0.5


def test_a_pointer_the_source_has_is_kept_by_its_rewrite() -> None:
    """A model's "(see section ...)" points at nothing the document is known to have and goes; a
    rewrite keeps the one its source has, word for word."""
    source = "The Act is long (see Chapter 3), and its terms are old."
    answer = "The Act is long (see Chapter 3), and its terms are old (see section 9)."
    out = gate(answer, source=source)
    assert out.text == "The Act is long (see Chapter 3), and its terms are old."
    assert [(c.rule, c.text) for c in out.cuts] == [("meta", "(see section 9)")]


def test_titles_are_stored_without_markup() -> None:
    """A brief or a title that starts with a heading marker gives the document, the job page and
    the history a clean title ("# My allotment year" would show as "# # My allotment year")."""
    assert title_of_brief("# My allotment year\n\nA diary of plot 34.") == "My allotment year"
    assert PlanModel(title="**# My allotment year**", sections=[{"title": "## ## Spring"}]).title == "My allotment year"
    assert PlanModel(title="x", sections=[{"title": "## ## Spring"}]).sections[0].title == "Spring"
    spec = JobSpec(kind="generate", prompt="x", target_words=100, title="# # My allotment year")
    assert spec.title == "My allotment year"
    assert [clean_title(t) for t in ("C#", "#1 hits of 1990", "Learning C#")] == [
        "C#",
        "#1 hits of 1990",
        "Learning C#",
    ]


@pytest.mark.parametrize(("rule", "prompt", "case"), junk_cases(), ids=[r for r, _, _ in junk_cases()])
def test_junk_is_cut_recorded_and_not_counted(rule: str, prompt: str, case: str) -> None:
    answer = MARKED.sub(r"\1", case)
    junk = MARKED.findall(case)
    out = gate(answer, prompt=prompt)
    assert squash(out.text) == squash(MARKED.sub("", case))
    assert rule in {c.rule for c in out.cuts}
    assert out.words_cut == sum(count_words(j) for j in junk)
    assert out.words_in - out.words_cut <= count_words(out.text) <= out.words_in
    assert all(r["words"] >= 0 and len(str(r["text"])) <= 200 for r in out.records())


def test_a_junk_answer_inside_real_prose_costs_the_prose_nothing() -> None:
    prose = (FIXTURES / "prose" / "austen.txt").read_text()
    junk = "\n\n".join(MARKED.sub(r"\1", c) for _, _, c in junk_cases())
    out = gate(prose + "\n\n" + junk)
    assert squash(prose) in squash(out.text)


def test_loops_and_repeats_against_what_came_before() -> None:
    para = (
        "The keeper climbed the stairs each evening, lit the lamp, and watched the sea until the "
        "first ships showed their lights beyond the reef."
    )
    out = gate(para, before=para)
    assert out.text == "" and [c.rule for c in out.cuts] == ["repeat"]
    looped = " ".join(f"Step {i}: he lit the lamp again." for i in range(1, 40))
    out = gate(looped)
    assert out.text == "" and {c.rule for c in out.cuts} == {"loop"}
    # A loop of longer sentences is said once: each again is a near repeat of the first.
    looped = " ".join(f"Step {i}: the keeper climbed the stairs and lit the lamp again." for i in range(1, 30))
    out = gate(looped)
    assert out.text == "Step 1: the keeper climbed the stairs and lit the lamp again."
    assert {c.rule for c in out.cuts} == {"near_repeat"} and len(out.cuts) == 28
    assert gate("Honey honey honey honey honey honey is sweet.").text == "Honey is sweet."


def test_quoted_foreign_words_and_numbers_in_sentences_stay() -> None:
    for prose in (
        "The French call it *savoir-faire*, and the keepers had plenty of it.",
        'In 1851 he sailed 3,000 miles, and the Greek word "λόγος" was painted on his bow.',
        "The tower cost $4,300 in 1869, and $5 more for the bell; the lens came from Paris (Fresnel's shop).",
        "She counted them: 1, 2, 3, 4, and then the fifth boat came round the point.",
        "“Will you come?”\n\n“Yes.”\n\n“And bring the lamp?”\n\n“Yes.”\n\nShe went out into the dark.",
    ):
        assert gate(prose) == Gated(prose, [], count_words(prose)), prose


def test_document_repeats_are_cut_once() -> None:
    para = "The keepers kept a log of every ship, every storm and every night the lamp was lit."
    first = f"{para}\n\nA second paragraph that the other chapter does not have in it at all."
    second = f"Another chapter opens here with a sentence of its own and some words.\n\n{para}"
    taken = {m.fingerprint for m in fingerprints(first)}
    text, cuts = drop_repeats(second, taken)
    assert text == "Another chapter opens here with a sentence of its own and some words."
    assert [(c.rule, c.words) for c in cuts] == [("repeat", count_words(para))]
    assert drop_repeats(second, set()) == (second, [])


def test_chinese_prose_is_judged_by_its_own_sentence_ends() -> None:
    prose = "灯塔守护者每天晚上点亮灯。船只在远处看到光。\n\n风暴持续了三天，守护者一直没有睡觉。"
    assert gate(prose).cuts == []
    out = gate(prose + "第二天早上")
    assert out.text == prose and [c.rule for c in out.cuts] == ["unfinished"]


def test_sentence_ends_skip_abbreviations_and_keep_closers() -> None:
    """The sentence rule the repeat, meta and unfinished rules stand on: "Mr." and an initial end
    nothing, closing quotes stay with their sentence, CJK ends need no space after them."""
    para = 'Mr. Holmes met Dr. Watson and J. Smith at St. Paul\'s. "Is it late?" he asked… No. 3 waited!「雨だ。」Then'
    assert sentences(para) == [
        "Mr. Holmes met Dr. Watson and J. Smith at St. Paul's.",
        '"Is it late?"',
        "he asked…",
        "No. 3 waited!「雨だ。」",
        "Then",
    ]


def test_an_echo_needs_most_of_one_prompt_line_not_words_spread_over_many() -> None:
    """The echo index finds a prompt line's words said back (however reworded), and not a
    sentence whose words are each somewhere in the prompt but in no one line of it."""
    prompt = "The keeper climbs the tower at dusk to light the lamp.\nA storm gathers over the northern reef tonight."
    said_back = "The keeper climbs the tower at dusk to light the lamp again."
    spread = "The storm keeper lights the northern tower lamp at dusk tonight."
    out = gate(f"{said_back} {spread} He waited for the ships.", prompt=prompt)
    assert [c.rule for c in out.cuts] == ["echo"] and said_back in out.cuts[0].text
    assert out.text == f"{spread} He waited for the ships."


async def test_the_gate_process_judges_as_the_loop_does_and_outlives_its_process() -> None:
    """The worker runs the gate in a process of its own: the same verdict as on the event loop,
    and a process that dies (killed, out of memory) costs no answer: it is judged here and a new
    process takes the next."""
    prose = (PROSE[0].read_text().split("\n\n")[5]).strip()
    answer = f"Here is the rewritten passage:\n\n{prose}\n\n( 75 ) - ( 76 ) - ( 77 ) - ( 78 ) - ( 79 )"
    before = PROSE[1].read_text().split("\n\n")[2].strip()
    here = gate(answer, prompt="Continue the story with about 300 words.", before=before)
    assert [c.rule for c in here.cuts] == ["meta", "number_run"]  # the test has junk to cut
    await gating.start_gate_process()
    try:
        kw = {"prompt": "Continue the story with about 300 words.", "before": before}
        assert await gating.gate(answer, **kw) == here
        process = gating._process
        assert process is not None
        os.kill(process.proc.pid, signal.SIGKILL)
        assert await gating.gate(answer, **kw) == here  # judged here, the dead process replaced
        assert gating._process is not None and gating._process is not process
        assert await gating.gate(answer, **kw) == here
        assert gating._process is not None and gating._process.proc.returncode is None
    finally:
        await gating.stop_gate_process()


@pytest.mark.usefixtures("worker")
async def test_a_near_repeat_of_another_chapter_is_cut_and_the_title_is_stored_clean(db, client, fake, user) -> None:
    """Against a real job's claimed marks: a paragraph of its first chunk said again in its last
    with words changed is cut (rule near_repeat), and only the kept paragraph's marks stay claimed
    (the cut one's are given back in the same transaction). The job's title came with a doubled
    heading marker: it is stored clean, in the document, the job row and the history."""
    fake.reset()
    title = "# # My allotment year"  # as a user pasted it from a Markdown file
    job_id = await submit(
        db,
        client,
        user,
        kind="generate",
        prompt="A diary of plot 34.",
        title=title,
        target_words=900,
        options={"chunk_words": 300},
    )
    assert await wait(client, job_id) == "succeeded"
    doc = await output(db, job_id)
    assert (await job_row(db, job_id)).title == "My allotment year"
    assert doc is not None and doc.text.startswith("# My allotment year\n") and "# #" not in doc.text
    async with db.tx() as s:
        chunks = (await s.execute(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.ordinal))).scalars().all()
        shown = (await s.execute(text("SELECT title FROM job_history WHERE id = :j"), {"j": job_id})).scalar_one()
    assert shown == "My allotment year" and len(chunks) >= 2
    para = max(paragraphs(chunks[0].text), key=count_words)
    words = para.split()
    again = " ".join([*words[:10], "and", *words[10:20], *words[21:]])  # a word added, one dropped
    own = (
        "Our second hive sits by the compost heap, facing east, so that the bees warm up early; its workers "
        "take the lime trees along the lane in July and leave the clover to the first colony."
    )
    async with db.job_tx(job_id) as tx:
        last = await tx.session.get(Chunk, chunks[-1].id)
        assert last is not None
        out = await gating.claim(tx, last, 99, Gated(f"{again}\n\n{own}", [], count_words(again + " " + own)))
    assert out.text == own and [(c.rule, c.text) for c in out.cuts] == [("near_repeat", again)]
    async with db.tx() as s:
        claimed = set(
            (
                await s.execute(
                    text("SELECT fingerprint FROM text_marks WHERE job_id = :j AND attempt_no = 99"), {"j": job_id}
                )
            ).scalars()
        )
    assert claimed == {m.fingerprint for m in fingerprints(own)}


# A gate process that answers its first request with a verdict for another request first (a late
# answer left in the pipe), then its own; and never answers the second.
_LATE = r"""
import json, sys, time
for n, line in enumerate(sys.stdin):
    req = json.loads(line)
    if n == 0:
        print(json.dumps({"id": -1, "text": "a verdict for another chunk", "cuts": [], "words_in": 5}), flush=True)
        print(json.dumps({"id": req["id"], "text": req["answer"], "cuts": [], "words_in": 2}), flush=True)
    else:
        time.sleep(120)
"""


async def test_the_gate_process_answers_by_request_id_and_a_late_one_is_killed_under_its_lock(monkeypatch) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _LATE, stdin=PIPE, stdout=PIPE)
    process = gating._GateProcess(proc)
    request = {"answer": "my own words", "prompt": "", "source": "", "before": "", "fragment": False}
    try:
        assert (await process.ask(request)).text == "my own words"  # the stale verdict is not taken for it
        monkeypatch.setattr(gating, "GATE_TIMEOUT_S", 0.5)
        with pytest.raises(TimeoutError):
            await process.ask(request)
        # Killed before its lock was let go: nothing it might say later reaches the next caller.
        assert proc.returncode is not None and not process.lock.locked()
    finally:
        await process.stop()
