"""The word rule and the text tools (pure functions, no services)."""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.prompts import ChunkContext, chunk_messages
from core.continuity import seam_issues
from core.gate import Gated, gate
from core.plan import fallback_plan, parse_plan
from core.recall import MemoryContext
from core.text import count_words, split_parts, trim_to_words


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
    out = gate(
        "<start_of_image>## Heading\nSummary of what is written so far: bees are kind\n"
        "Real prose stays here.\n1) 2) 3) 4)\n<h2>Part 3:</h2>",
        prompt=prompt,
    ).text
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
        brief="",
        source_text=None,
        previous_tail="The queen lays eggs.",
        memory=MemoryContext(
            summaries=["Just before: Earlier we met the queen."], entities=["Brood Box (term) - lower box"]
        ),
    )
    for style in ("instruct", "document"):
        msgs = chunk_messages(ctx, style=style, words=300)
        body = "\n".join(m["content"] for m in msgs)
        assert "Earlier we met the queen." in body and "Brood Box" in body and "The queen lays eggs." in body
        ext = chunk_messages(ctx, style=style, words=120, current_text="Some text so far.")
        assert "Some text so far." in ext[-1]["content"]
        if style == "instruct":
            assert "about 300 words" in body and "about 120 more words" in ext[-1]["content"]
        else:  # a document to continue from its last line: no request a base model would say back
            assert body.endswith("The queen lays eggs.\n\n") and ext[-1]["content"].endswith("Some text so far.\n\n")
            assert "words" not in body and "(" not in body


def test_seam_checks_find_repeats_broken_sentences_and_dangling_refs() -> None:
    para = "This paragraph is long enough to count as a repeated paragraph in a seam."
    issues = seam_issues(
        [(0, para + "\n\nEnds mid"), (1, para + " See Section 9. The brood box is here.")],
        sections_total=3,
        seen_paragraphs=set(),
    )
    kinds = {i["type"] for i in issues}
    assert {"broken_seam", "dangling_reference"} <= kinds
    issues = seam_issues([(0, para), (1, para)], 3, set())
    assert [i["type"] for i in issues] == ["repeated_paragraph"]


def test_repetition_loops_are_not_counted_as_prose() -> None:
    assert gate("ArgumentParser\n" * 50).text == ""  # said again, then no sentence at all
    assert gate("The bees fly home to the hive. " * 30).text == "The bees fly home to the hive."
    assert (
        gate("Honey honey honey honey honey honey is sweet.").text == "Honey is sweet."
    )  # a sentence starts uppercase
    prose = (
        "Bees keep the hive warm in winter by clustering around the queen. In spring the colony grows "
        "quickly, and a keeper must give it room or it will swarm. Inspections every week tell the keeper "
        "whether the queen is laying, whether there is food, and whether queen cells have appeared."
    )
    assert gate(prose).text == prose


def test_hard_wrapped_prose_is_rejoined_but_lists_stay() -> None:
    text = "Keep a record\nof the hive.\n\n- one\n- two\n\nNext paragraph\ncontinues here."
    assert gate(text).text == "Keep a record of the hive.\n\n- one\n- two\n\nNext paragraph continues here."


# -- the word rule against the real wc binary ------------------------------------------------

# Where GNU wc -w (coreutils 9.1, C.UTF-8) ends a word, as measured on every code point:
# written out here, not imported, so that the tests check the implementation against wc.
WC_SEPARATORS = set("\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a")
WC_SEPARATORS |= set("\u202f\u205f\u2060\u3000")
IDEOGRAPH = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def wc_words(text: str) -> int:
    wc = shutil.which("wc")
    assert wc is not None
    # C.UTF-8 and no POSIXLY_CORRECT (which would make wc stop splitting at no-break spaces).
    out = subprocess.run([wc, "-w"], input=text.encode(), capture_output=True, check=True, env={"LC_ALL": "C.UTF-8"})
    return int(out.stdout.split()[0])


def wc_words_each(texts: list[str]) -> list[int]:
    """``wc -w`` of each text, in one wc call (one file each)."""
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, str(i)) for i in range(len(texts))]
        for path, text in zip(paths, texts, strict=True):
            with open(path, "wb") as f:
                f.write(text.encode())
        out = subprocess.run(["wc", "-w", *paths], capture_output=True, check=True, env={"LC_ALL": "C.UTF-8"})
    return [int(line.split()[0]) for line in out.stdout.decode().splitlines()[: len(texts)]]


@pytest.mark.parametrize(
    "ch",
    sorted(
        {chr(c) for c in range(0x3000 + 1) if chr(c).isspace()}
        | WC_SEPARATORS
        | set("\u00ad\u180e\u200b\u200c\u200d\u2028\u2029\u2060\ufeff\x00\x1b\x7f")
    ),
    ids=lambda ch: f"U+{ord(ch):04X}",
)
def test_words_split_exactly_where_wc_splits(ch: str) -> None:
    # Python's str.split() splits at U+001C-U+001F, U+0085, U+2028, U+2029; wc does not.
    text = f"one{ch}two 3{ch}{ch}4 {ch}five{ch}"
    assert count_words(text) == wc_words(text) == (5 if ch in WC_SEPARATORS else 3)


def test_no_code_point_splits_differently_from_wc() -> None:
    # Every code point between two letters, one wc call: a split where wc does not split (or the
    # reverse) would change the total.
    # (no surrogates, no ideographs: IDEOGRAPH's ranges are left out)
    code_points = (range(0x3400), range(0x4DC0, 0x4E00), range(0xA000, 0xD800), range(0xE000, 0xF900))
    text = "a" + "b\na".join(map(chr, itertools.chain(*code_points, range(0xFB00, 0x110000)))) + "b"
    assert count_words(text) == wc_words(text)


_TEXT_PIECES = st.one_of(
    st.sampled_from(sorted(WC_SEPARATORS) + list("\x1c\x1d\x1e\x1f\x85\u2028\u2029\u200b\ufeff\u00ad")),
    st.sampled_from(["word", "x1", "42", "é", "Ωmega", "—", "...", "-", "_", "“", "\x01"]),
    st.text(st.characters(exclude_categories=("Cs",)).filter(lambda c: not IDEOGRAPH.match(c)), max_size=3),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_TEXT_PIECES, min_size=1, max_size=40).map("".join), min_size=5, max_size=25))
def test_word_rule_is_wc_without_the_tokens_that_hold_no_letter_or_digit(texts: list[str]) -> None:
    separators = "[" + re.escape("".join(sorted(WC_SEPARATORS))) + "]+"
    for text, wc in zip(texts, wc_words_each(texts), strict=True):
        assert count_words(text) <= wc, text
        if all(any(ch.isalnum() for ch in token) for token in re.split(separators, text) if token):
            assert count_words(text) == wc, text


# -- trimming CJK text ---------------------------------------------------------------------


def _chinese(sentences: int, seed: int, end: str = "。") -> str:
    rng = random.Random(seed)
    chars = "的一是不了人我在有他这中大来上们到说国和地也子时道出要于就下得可你年生自会那后能对着事"
    return "".join("".join(rng.choice(chars) for _ in range(rng.randint(25, 55))) + end for _ in range(sentences))


def test_one_paragraph_chinese_chunk_trims_to_target_at_a_sentence_end() -> None:
    para = _chinese(24, seed=1)
    assert count_words(para) > 800 and "\n" not in para and " " not in para
    out = trim_to_words(para, 735, 700)
    assert 700 <= count_words(out) <= 735 and out.endswith("。") and para.startswith(out)


def test_chinese_without_sentence_ends_is_cut_at_the_exact_ideograph() -> None:
    para = _chinese(1, seed=2)[:-1] * 20
    out = trim_to_words(para, 735, 700)
    assert count_words(out) == 735 and para.startswith(out)
    mixed = "Intro text in English. " * 10 + "\n\n" + para  # 40 words, then one long run
    assert count_words(trim_to_words(mixed, 735, 700)) == 735


def test_chinese_cut_keeps_the_closing_quote_and_later_sentences_win() -> None:
    para = "「" + _chinese(6, seed=3, end="。」「") + _chinese(20, seed=4, end="！")
    out = trim_to_words(para, 600, 500)
    assert 500 <= count_words(out) <= 600 and out.endswith("！")
    quoted = _chinese(30, seed=5, end="？」")
    out = trim_to_words(quoted, 600, 500)
    assert out.endswith("？」") and 500 <= count_words(out) <= 600


# -- echoes of the prompt --------------------------------------------------------------------


def _ctx(**kw: object) -> ChunkContext:
    base = dict(
        plan={"title": "Lighthouses", "thesis": "Lights guided ships home.", "sections": [{"title": "Lamps"}]},
        section_index=0,
        section_title="Lamps",
        section_summary="How the lamps worked.",
        memory=MemoryContext(
            summaries=["Just before: The first lighthouses burned wood. Later keepers used oil."],
            entities=["Fresnel Lens (term) - a lens of rings"],
        ),
        brief="",
        source_text=None,
        previous_tail="The keeper climbed the stairs at dusk.",
    )
    return ChunkContext(**{**base, **kw})  # type: ignore[arg-type]


PROSE = (
    "The lamp was lit each night, and its light reached far out to sea.\n\n"
    "Keepers trimmed the wicks twice a night and wrote the weather in a log."
)


@pytest.mark.parametrize("style", ["document", "instruct"])
def test_echoes_of_prompt_lines_and_the_request_are_removed_and_reported(style: str) -> None:
    msgs = chunk_messages(_ctx(), style=style, words=830)
    prompt = "\n".join(m["content"] for m in msgs)
    request = prompt.strip().splitlines()[-1]  # the request, or (document) the text's last line
    answer = (
        f"{request}\nThe lamp was lit each night, and its light reached far out to sea. "
        "(Continue from where it stopped, with about 830 words.) <start_of_image> 1) 2) 3)\n\n"
        f"{prompt.splitlines()[2]}\nKeepers trimmed the wicks twice a night and wrote the weather in a log. "
        f"{' '.join(request.split()[:6])}\n<end_of_turn>model\n[about 830 more words]"
    )
    out = gate(answer, prompt=prompt)
    assert out.text == PROSE
    cut = [c.text for c in out.cuts]
    assert cut[:3] == ["<start_of_image>", "<end_of_turn>model", "1) 2) 3)"]
    assert request in cut and "(Continue from where it stopped, with about 830 words.)" in cut
    assert len(cut) == 8 and {c.rule for c in out.cuts} == {"template_token", "list_junk", "echo"}


def test_prose_is_not_an_echo_of_its_prompt() -> None:
    for style in ("document", "instruct"):
        msgs = chunk_messages(_ctx(), style=style, words=300)
        out = gate(PROSE, prompt="\n".join(m["content"] for m in msgs))
        assert out == Gated(PROSE, [], count_words(PROSE))


def test_a_rewrite_may_keep_its_source_word_for_word() -> None:
    source = "The lamp was lit each night, and its light reached far out to sea."
    for style in ("document", "instruct"):
        msgs = chunk_messages(_ctx(source_text=source), style=style, words=40)
        prompt = "\n".join(m["content"] for m in msgs)
        assert gate(PROSE, prompt=prompt, source=source).text == PROSE
        assert gate(PROSE, prompt=prompt).text != PROSE  # without it, the source is an echo


def test_request_shaped_sentences_go_even_without_a_prompt() -> None:
    out = gate("Keepers kept logs. Finish that sentence in about 12 words.")
    assert out.text == "Keepers kept logs."
    assert [(c.rule, c.text) for c in out.cuts] == [("echo", "Finish that sentence in about 12 words.")]
