"""The word rule and the text tools (pure functions, no services)."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from activities.prompts import ChunkContext, chunk_messages
from core.coherence import delta, fold, seam_issues
from core.plan import fallback_plan, parse_plan
from core.text import clean_model_text, count_words, split_parts, trim_to_words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", 0),
        ("one", 1),
        ("  two\twords\n", 2),
        ("— -- ... !!", 0),  # punctuation-only tokens are not words
        ("state-of-the-art 3.14 O'Brien", 3),
        ("naïve café Ωmega", 3),
        ("漢字かな", 3),  # two ideographs, plus one for the kana in the same token
        ("中文 text", 3),
        ("word, word; word.", 3),
    ],
)
def test_word_rule(text: str, words: int) -> None:
    assert count_words(text) == words


def test_word_rule_never_exceeds_wc() -> None:
    wc = shutil.which("wc")
    assert wc is not None
    rng = random.Random(3)
    alphabet = ["word", "a", "—", "...", "x1", "42", "-", "“quoted”", "é", "\n", "\t", "  ", "(", ")"]
    for _ in range(200):
        text = " ".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        out = subprocess.run([wc, "-w"], input=text.encode(), capture_output=True, check=True).stdout
        assert count_words(text) <= int(out.split()[0])


def test_split_parts_keeps_every_word_at_paragraph_boundaries() -> None:
    paras = [" ".join(["w"] * n) for n in (50, 120, 30, 400, 10, 90)]
    text = "\n\n".join(paras)
    parts = split_parts(text, 150)
    assert sum(count_words(p) for p in parts) == count_words(text)
    assert all(count_words(p) <= 150 * 2.5 for p in parts)


def test_trim_stops_at_sentence_end_inside_window() -> None:
    text = "One two three. Four five six seven. Eight nine ten eleven twelve."
    assert trim_to_words(text, 9, 5) == "One two three. Four five six seven."
    assert count_words(trim_to_words(text, 2, 1)) == 2  # no sentence end in the window: cut at max


def test_clean_removes_echo_headings_and_junk() -> None:
    prompt = "# Title\n\nSummary of what is written so far: bees are kind"
    out = clean_model_text(
        "<start_of_image>## Heading\nSummary of what is written so far: bees are kind\n"
        "Real prose stays here.\n1) 2) 3) 4)\n<h2>Part 3:</h2>",
        echo_of=prompt,
    )
    assert out == "Real prose stays here."


def test_plan_parsing_is_lenient_but_validates() -> None:
    p = parse_plan('Sure! {"title": "T", "sections": ["1. Intro", {"title": "Body"}], "glossary": ["Hive: a box"]}')
    assert [s.title for s in p.sections] == ["Intro", "Body"] and p.glossary == {"Hive": "a box"}
    for bad in ["", "no json here", '{"title": "T"}', '{"title": "T", "sections": []}', '{"title": 5, "sections": [']:
        with pytest.raises(ValueError):
            parse_plan(bad)
    fb = fallback_plan("Keeping bees in small gardens", 3)
    assert len(fb.sections) == 3 and fb.title


def test_prompt_styles_carry_state_and_ask_for_words() -> None:
    ctx = ChunkContext(
        plan={"title": "Bees", "thesis": "Bees matter.", "sections": [{"title": "Hives"}]},
        section_index=0,
        section_title="Hives",
        section_summary="",
        key_points=[],
        state_summary="Earlier we met the queen.",
        glossary={"Brood Box": "lower box"},
        open_threads=[],
        brief="",
        source_text=None,
        previous_tail="The queen lays eggs.",
    )
    for style in ("instruct", "document"):
        msgs = chunk_messages(ctx, style=style, words=300)
        body = "\n".join(m["content"] for m in msgs)
        assert "about 300 words" in body and "Earlier we met the queen." in body and "Brood Box" in body
        assert "The queen lays eggs." in body
        ext = chunk_messages(ctx, style=style, words=120, current_text="Some text so far.")
        assert "about 120 more words" in ext[-1]["content"] and "Some text so far." in ext[-1]["content"]


def test_delta_and_fold_bound_the_state() -> None:
    text = "The Royal Jelly is fed to larvae. The Royal Jelly will matter later.\n\nWorker bees forage. " * 30
    d = delta(text, {})
    assert "Royal Jelly" in d["new_terms"] and d["open_threads"]
    summary, glossary, threads = fold("x " * 500, {}, [], d, "chunk 1")
    assert len(summary.split()) <= 221 and "Royal Jelly" in glossary and len(threads) <= 6


def test_seam_checks_find_repeats_drift_and_dangling_refs() -> None:
    para = "This paragraph is long enough to count as a repeated paragraph in a seam."
    issues = seam_issues(
        [(0, para + "\n\nEnds mid"), (1, para + " See Section 9. The brood box is here.")],
        {"Brood Box": "x"},
        sections_total=3,
        seen_paragraphs=set(),
    )
    kinds = {i["type"] for i in issues}
    assert {"broken_seam", "dangling_reference", "glossary_drift"} <= kinds
    issues = seam_issues([(0, para), (1, para)], {}, 3, set())
    assert [i["type"] for i in issues] == ["repeated_paragraph"]


def test_repetition_loops_are_not_counted_as_prose() -> None:
    assert clean_model_text("ArgumentParser\n" * 50) == "ArgumentParser"
    assert clean_model_text("The bees fly home to the hive. " * 30) == ""
    assert clean_model_text("honey honey honey honey honey honey is sweet") == "honey is sweet"
    prose = (
        "Bees keep the hive warm in winter by clustering around the queen. In spring the colony grows "
        "quickly, and a keeper must give it room or it will swarm. Inspections every week tell the keeper "
        "whether the queen is laying, whether there is food, and whether queen cells have appeared."
    )
    assert clean_model_text(prose) == prose


def test_hard_wrapped_prose_is_rejoined_but_lists_stay() -> None:
    text = "Keep a record\nof the hive.\n\n- one\n- two\n\nNext paragraph\ncontinues here."
    assert clean_model_text(text) == "Keep a record of the hive.\n\n- one\n- two\n\nNext paragraph continues here."
