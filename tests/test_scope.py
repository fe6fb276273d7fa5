"""The rules an edit proves its scope by (core.scope) and checks its instructions and key points
with (core.coverage), on real prose: each must say no where it should, and yes on prose."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.coverage import Item, by_rule, judged, merge, names, numbers, repair_target, windows
from core.scope import (
    boundary_problems,
    document_proof,
    end_problem,
    prove,
    selection_problems,
    splice,
    start_problem,
    whole_sentences,
)
from core.text import count_words, paragraphs

PROSE = Path(__file__).parent / "fixtures" / "prose"
PRIDE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters."
)


def test_a_passage_that_starts_or_ends_mid_sentence_is_named():
    assert start_problem("2500 BC) is a complex structure. It stands.") is not None
    assert start_problem("and then the tide came in.") is not None
    assert start_problem(", which nobody saw.") is not None
    assert end_problem("The harbour wall was finished in") is not None
    for fine in (PRIDE, '"Yes," she said. "It is."', "1850 was a hard year.", "(A note.) It rained."):
        assert boundary_problems(fine) == [], fine


def test_real_prose_starts_and_ends_on_sentence_boundaries():
    for path in sorted(PROSE.glob("*.txt")):
        for para in paragraphs(path.read_text())[:40]:
            if para.lstrip()[:1].islower() or para.lstrip().startswith(("-", "*", "|")):
                continue  # a fixture's own fragment (a list, a wrapped verse line)
            assert start_problem(para) is None, (path.name, para[:80])


def test_a_fragment_before_the_first_sentence_and_after_the_last_is_cut_and_recorded():
    text, cuts = whole_sentences("2500 BC) is a complex structure of stone. The river ran. Then the wind")
    assert text == "The river ran."
    assert [c.rule for c in cuts] == ["mid_sentence_start", "unfinished"]
    assert cuts[0].text.startswith("2500 BC)") and cuts[1].text == "Then the wind"
    assert whole_sentences(PRIDE) == (PRIDE, [])


def test_a_splice_proves_the_rest_unchanged_and_a_changed_prefix_or_suffix_is_caught():
    text = f"{PRIDE}\n\nNobody paid the toll twice. The road ran west."
    s = text.index("Nobody")
    e = text.index("twice.") + len("twice.")
    sp = splice(text, s, e, "Rumour had it that nobody ever paid the toll twice.")
    assert sp.after == text[:s] + "Rumour had it that nobody ever paid the toll twice." + text[e:]
    assert prove(text, sp.after, s, e, sp.new) == []
    proof = sp.proof()
    assert proof["prefix_sha256"] != proof["suffix_sha256"]
    assert proof["selection_before"] == "Nobody paid the toll twice."
    # Anything else changed, before or after the selection, is caught.
    assert prove(text, sp.after.replace("truth", "trvth", 1), s, e, sp.new)
    assert prove(text, sp.after[:-1], s, e, sp.new) == ["the text after the selection changed"]
    assert prove(text, sp.after + " More.", s, e, sp.new)
    # The document: its last two sentences gone after a rewrite of a sentence before them.
    cut = sp.after[: sp.after.index(" The road ran west.")]
    assert document_proof(text, cut, sp.old, sp.new)["problems"]
    assert document_proof(text, sp.after, sp.old, sp.new)["problems"] == []


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "empty"),
        ("Nobody paid the toll twice.", "unchanged"),
        (f"{PRIDE} Rumour had it nobody paid twice.", "repeats text from around"),
        ("The main purpose of the passage is to show the toll. The author's question is asking you:", "the task"),
        ("Rumour had it that nobody paid the toll", "ends in the middle"),
        ("and rumour had it nobody paid twice.", "lowercase"),
        (" ".join(["Tolls were paid."] * 30), "words for a selection"),
    ],
)
def test_a_rewrite_that_leaves_its_selection_is_refused(answer, why):
    problems = selection_problems(answer, prefix=PRIDE + "\n\n", old="Nobody paid the toll twice.", suffix="")
    assert any(why in p for p in problems), problems


def test_a_rewrite_inside_a_sentence_joins_it_and_a_good_one_passes():
    prefix, old, suffix = "Carters said that ", "nobody paid the toll", " twice, and they were right."
    assert selection_problems("no carter ever paid the toll", prefix=prefix, old=old, suffix=suffix) == []
    broken = selection_problems("The first one is called the white mile.", prefix=prefix, old=old, suffix=suffix)
    assert any("starts a new sentence" in p for p in broken) and any("ends a sentence" in p for p in broken)
    good = "Rumour had it that nobody ever paid the toll twice."
    assert selection_problems(good, prefix=PRIDE + " ", old="Nobody paid the toll twice.", suffix="") == []
    # A model that said the text around again is not trusted with the rest of its answer.
    raw = f"{PRIDE} {good}"
    assert selection_problems(good, prefix=PRIDE + " ", old="Nobody paid the toll twice.", suffix="", raw=raw)


def test_names_and_numbers_decide_alone_and_a_key_point_in_one_sentence_is_covered():
    point = Item("key_point", "The harbour wall was finished in 1847 by Elias Thorne.")
    assert names(point.text) == ["Elias Thorne"] and numbers(point.text) == ["1847"]
    missing = by_rule(point, PRIDE)
    assert missing is not None and missing.verdict == "missing" and "Elias Thorne" in missing.why
    text = f"{PRIDE} In 1847 the harbour wall was finished, the work of Elias Thorne and his men."
    covered = by_rule(point, text)
    assert covered is not None and covered.verdict == "covered" and "Elias Thorne" in covered.quote
    # An instruction to take a name away is followed when the name is gone: no rule says missing.
    assert by_rule(Item("instruction", "remove Elias Thorne from the ending"), PRIDE) is None
    assert by_rule(Item("instruction", "make the ending darker"), PRIDE) is None  # the judge's


def test_the_judges_answer_is_validated_and_a_judge_that_cannot_answer_leaves_items_unchecked():
    items = [Item("instruction", "make the ending darker"), Item("key_point", "a wife is wanted")]
    ok, errors = judged(
        '{"items":[{"item":1,"covered":false,"why":"it ends in sunshine"},'
        '{"item":2,"covered":true,"quote":"must be in want of a wife"}]}',
        items,
        PRIDE,
    )
    assert errors == [] and ok[1].verdict == "missing" and ok[2].verdict == "covered"
    lie = '{"items":[{"item":1,"covered":true,"quote":"the night fell on the harbour"}]}'
    lying, errors = judged(lie, items, PRIDE)
    assert 1 not in lying and any("not" in e for e in errors) and any("item 2" in e for e in errors)
    none, errors = judged("{not json", items, PRIDE)
    assert none == {} and errors
    assert [v.verdict for v in merge([lying], items)] == ["unchecked", "unchecked"]
    assert [v.verdict for v in merge([ok, {}], items)] == ["unchecked", "covered"]


def test_a_long_text_is_judged_in_windows_and_a_retry_writes_where_the_item_belongs():
    text = "\n\n".join([PRIDE] * 40)
    parts = windows(text, 1000)
    assert len(parts) > 1 and all(count_words(p) <= 1000 for p in parts)
    paras = ["The harbour was quiet.", "Elias Thorne built the wall in stone.", "Night came at last."]
    assert repair_target(paras, [Item("instruction", "make the ending darker")]) == 2
    assert repair_target(paras, [Item("instruction", "a stronger opening")]) == 0
    assert repair_target(paras, [Item("key_point", "the wall was built of stone by Thorne")]) == 1
