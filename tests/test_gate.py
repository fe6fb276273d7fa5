"""The degeneration gate (core.gate): junk is cut and recorded, real prose is never touched."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from activities import gating
from core.gate import Gated, gate
from core.repeats import drop_repeats, fingerprints
from core.sentences import sentences
from core.text import count_words

FIXTURES = Path(__file__).parent / "fixtures"
PROSE = sorted((FIXTURES / "prose").glob("*.txt"))
MARKED = re.compile(r"⟦(.*?)⟧", re.S)


def junk_cases() -> list[tuple[str, str]]:
    """(rule, answer with ⟦junk⟧ marked) from tests/fixtures/junk.txt."""
    body = "\n".join(ln for ln in (FIXTURES / "junk.txt").read_text().splitlines() if not ln.startswith("#"))
    return [(m.group(1), m.group(2).strip()) for m in re.finditer(r"^== (\w+)\n(.*?)(?=^== |\Z)", body, re.M | re.S)]


def squash(text: str) -> str:
    return " ".join(text.split())


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
    marks = [m.fingerprint for p in PROSE for m in fingerprints(p.read_text())]
    assert len(marks) == len(set(marks)) > 250


@pytest.mark.parametrize(("rule", "case"), junk_cases(), ids=[r for r, _ in junk_cases()])
def test_junk_is_cut_recorded_and_not_counted(rule: str, case: str) -> None:
    answer = MARKED.sub(r"\1", case)
    junk = MARKED.findall(case)
    out = gate(answer)
    assert squash(out.text) == squash(MARKED.sub("", case))
    assert rule in {c.rule for c in out.cuts}
    assert out.words_cut == sum(count_words(j) for j in junk)
    assert out.words_in - out.words_cut <= count_words(out.text) <= out.words_in
    assert all(r["words"] >= 0 and len(str(r["text"])) <= 200 for r in out.records())


def test_a_junk_answer_inside_real_prose_costs_the_prose_nothing() -> None:
    prose = (FIXTURES / "prose" / "austen.txt").read_text()
    junk = "\n\n".join(MARKED.sub(r"\1", c) for _, c in junk_cases())
    out = gate(prose + "\n\n" + junk)
    assert squash(prose) in squash(out.text)


def test_loops_and_repeats_against_what_came_before() -> None:
    para = (
        "The keeper climbed the stairs each evening, lit the lamp, and watched the sea until the "
        "first ships showed their lights beyond the reef."
    )
    out = gate(para, before=para)
    assert out.text == "" and [c.rule for c in out.cuts] == ["repeat"]
    looped = " ".join(f"Step {i}: the keeper climbed the stairs and lit the lamp again." for i in range(1, 30))
    out = gate(looped)
    assert out.text == "" and {c.rule for c in out.cuts} == {"loop"}
    assert gate("honey honey honey honey honey honey is sweet.").text == "honey is sweet."


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
