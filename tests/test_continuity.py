"""The continuity checks as pure rules: each check failing on real text (and passing on text that
agrees with the ledger), the judge heard only about entries it was shown, names as words, values
that differ, repairs settled on evidence, seams validated only by checks that answered, and the
report's counts and words. The story memory they check against: test_memory.py; end to end:
test_coherence.py."""

from __future__ import annotations

import pytest

from core.coherence import BASE_MODEL, ReportInput, brief, report, summary_line
from core.continuity import (
    Finding,
    apply_fixes,
    broken_seam_finding,
    changed_attributes,
    check,
    name_variants,
    near_misses,
    reopened_threads,
    repeated_opening,
    timeline_breaks,
)
from core.memory import ChunkMemory, fold
from core.repair import Recheck, settle, why_open
from core.seam import Fate, decide
from core.values import compare
from tests.helpers import entry

LEDGER = fold(
    [
        entry(1, "entity", "harbor lantern council", "the town's governing body", 0, name="Harbor Lantern Council"),
        entry(2, "entity", "elspeth", "a keeper", 0, name="Elspeth", etype="person"),
        entry(3, "attribute", "elspeth", "grey", 0, attribute="eyes", name="Elspeth", quote="Elspeth's grey eyes"),
        entry(4, "attribute", "elspeth", "the north tower", 0, attribute="location", name="Elspeth"),
        entry(5, "resolved", "who lit the lamp", "who lit the lamp", 1, quote="It was Elspeth who lit the lamp"),
        entry(6, "event", "the great storm", "the great storm", 1, when="1851", quote="the great storm of 1851"),
    ]
)


def _mem(**kw: object) -> ChunkMemory:
    return ChunkMemory.model_validate({"summary": "s", **kw})


def test_each_rule_finds_its_problem_in_real_text() -> None:
    text = "The harbor lantern council met at noon. Elspath watched from the quay with her blue eyes."
    variants = name_variants(text, LEDGER)
    assert [(f.subtype, f.fix) for f in variants] == [
        ("name_variant", ("harbor lantern council", "Harbor Lantern Council"))
    ]
    assert variants[0].quote == "The harbor lantern council met at noon." and variants[0].entry_id == 1
    assert [f.message for f in near_misses(text, LEDGER)] == ["“Elspath” is one letter from the established “Elspeth”"]
    mem = _mem(
        entities=[
            {
                "name": "Elspeth",
                "quote": "q",
                "attributes": [
                    {"attribute": "eyes", "value": "blue", "quote": "her blue eyes"},
                    {"attribute": "location", "value": "the quay", "quote": "watched from the quay"},
                ],
            }
        ],
        threads_opened=[{"thread": "Who lit the lamp?", "quote": "q"}],
        events=[{"what": "The great storm", "when": "1849", "quote": "q"}],
    )
    changed = changed_attributes(mem, LEDGER)
    assert [(f.category, f.entry_id, f.quote_there) for f in changed] == [("characters", 3, "Elspeth's grey eyes")]
    assert [f.entry_id for f in reopened_threads(mem, LEDGER)] == [5]
    assert [f.category for f in timeline_breaks(mem, LEDGER)] == ["timeline"]
    fixed, done = apply_fixes(text, variants)
    assert "Harbor Lantern Council met" in fixed and done == variants


def test_text_that_agrees_with_the_ledger_passes_every_rule() -> None:
    text = "The Harbor Lantern Council met at noon. Elspeth watched from the quay with her grey eyes."
    mem = _mem(
        entities=[
            {
                "name": "Elspeth",
                "quote": "q",
                "attributes": [
                    {"attribute": "eyes", "value": "grey", "quote": "grey eyes"},
                    {"attribute": "location", "value": "the quay", "quote": "the quay"},  # a move is news
                ],
            }
        ],
        events=[{"what": "the great storm", "when": "1851", "quote": "q"}],
    )
    assert check(text, mem, LEDGER) == []


def test_the_judge_is_heard_once_per_problem_and_only_about_entries_it_was_shown() -> None:
    mem = _mem(
        entities=[
            {
                "name": "Elspeth",
                "quote": "q",
                "attributes": [{"attribute": "eyes", "value": "blue", "quote": "her blue eyes"}],
            }
        ],
        contradictions=[
            {"category": "characters", "known": "E3", "quote": "her blue eyes", "explanation": "grey before"},
            {"category": "facts", "known": "E6", "quote": "in 1849", "explanation": "the storm was in 1851"},
            {"category": "plot", "known": "E99", "quote": "nothing", "explanation": "unknown ref"},
        ],
    )
    found = check("Elspeth looked up with her blue eyes in 1849.", mem, LEDGER)
    assert sorted((f.detector, f.entry_id) for f in found) == [("judge", 6), ("rule:attribute", 3)]


def test_a_chapter_that_opens_by_repeating_the_ending_is_found() -> None:
    ending = "The lamp burned all night above the harbour while the keeper wrote in the log."
    assert repeated_opening(f"Earlier.\n\n{ending}", f"{ending}\n\nThen morning came.")[0].subtype == "repeated_opening"
    assert repeated_opening(f"Earlier.\n\n{ending}", "Morning came over the harbour at last, grey and cold.") == []


def test_the_report_counts_per_10k_words_by_category() -> None:
    rows = [
        {"category": "characters", "severity": "major", "status": "repaired"},
        {"category": "characters", "severity": "major", "status": "open"},
        {"category": "timeline", "severity": "minor", "status": "open"},
    ]
    rep = report(ReportInput(20_000, rows, 120, 30, {"model": 18, "fallback": 2}, {"validated": 3, "flagged": 1}))
    assert rep["found"] == 3 and rep["repaired"] == 1 and rep["open"] == 2 and rep["per_10k_words"] == 1.5
    assert rep["by_category"]["characters"] == {"name": "characters", "found": 2, "per_10k_words": 1.0, "open": 1}
    assert rep["states"]["fallback_share"] == 0.1 and rep["seams"]["flagged"] == 1


def test_a_seam_left_broken_is_counted_and_said_in_the_reports_line() -> None:
    issue = {"type": "broken_seam", "chunk": 2, "next_chunk": 3, "text": "and the keepers went on counting the"}
    f = broken_seam_finding(issue, "2 bridge(s) asked for, each refused: ends in the middle of a sentence")
    assert (f.subtype, f.severity, f.quote) == ("broken_seam", "major", issue["text"]) and "chunk 3 stops" in f.message
    rows = [
        {"category": "style", "subtype": "broken_seam", "severity": "major", "status": "open"},
        {"category": "characters", "subtype": "attribute_changed", "severity": "major", "status": "open"},
    ]
    rep = report(ReportInput(10_000, rows, 10, 4, {"model": 4}))
    assert rep["broken_seams"] == 1 and rep["open"] == 2 and rep["by_category"]["style"]["open"] == 1
    assert "2 open (1 broken seam: text that stops mid-sentence)" in summary_line(rep)
    assert brief(rep)["broken_seams"] == 1
    assert "broken seam" not in summary_line(report(ReportInput(10_000, rows[1:], 10, 4, {"model": 4})))


# -- names as words, values that differ, repairs on evidence, seams that say what ran (issue 26) --


def test_a_sentence_start_and_an_article_are_never_a_variant() -> None:
    led = fold([entry(1, "entity", "harbour board", "the port's masters", 0, name="the Harbour Board")])
    assert name_variants("The Harbour Board met at dawn. “The Harbour Board,” she said.", led) == []
    text = "The Harbour Board met at dawn. Later the harbour board voted. Harbour board members left."
    found = name_variants(text, led)
    assert [f.fix for f in found] == [("harbour board", "Harbour Board"), ("Harbour board", "Harbour Board")]
    fixed, done = apply_fixes(text, found)
    assert fixed == "The Harbour Board met at dawn. Later the Harbour Board voted. Harbour Board members left."
    assert done == found
    # A lower-case established name is written capitalised at a sentence's start, and left so.
    led = fold([entry(2, "entity", "van der berg", "a family", 0, name="van der Berg")])
    assert name_variants("Van der Berg came late. Then van der Berg left.", led) == []


LEFT_HAND = "two fingers on his left hand"


@pytest.mark.parametrize(
    ("before", "now"),
    [
        ("blue", "not blue"),
        ("blue", "never blue"),
        ("two", "ten"),
        (LEFT_HAND, "ten fingers on his left hand"),
        ("brass compass on her left wrist", "brass compass on her right wrist"),
        ("lantern with a cracked red lens", "lantern with a cracked blue lens"),
        ("a dozen ships", "13 ships"),
    ],
)
def test_values_that_differ_are_findings(before: str, now: str) -> None:
    led = fold(
        [
            entry(1, "entity", "orrin", "a smith", 0, name="Orrin", etype="person"),
            entry(2, "attribute", "orrin", before, 0, attribute="detail", name="Orrin", quote=f"Orrin had {before}."),
        ]
    )
    mem = _mem(
        entities=[{"name": "Orrin", "quote": "q", "attributes": [{"attribute": "detail", "value": now, "quote": now}]}]
    )
    found = changed_attributes(mem, led)
    assert [(f.subtype, f.severity, f.entry_id) for f in found] == [("attribute_changed", "major", 2)]


def test_values_the_rules_cannot_tell_apart_are_the_judges_never_the_same() -> None:
    led = fold(
        [
            entry(1, "entity", "orrin", "a smith", 0, name="Orrin", etype="person"),
            entry(2, "attribute", "orrin", "a long scar", 0, attribute="mark", name="Orrin"),
        ]
    )

    def said(value: str, agrees: tuple[str, ...] = ()) -> ChunkMemory:
        return _mem(
            entities=[
                {
                    "name": "Orrin Vale",
                    "quote": "q",
                    "attributes": [{"attribute": "mark", "value": value, "quote": value}],
                }
            ],
            agrees=list(agrees),
        )

    for same in ("a long scar", "a long scar across the cheek", "A LONG SCAR."):
        assert changed_attributes(said(same), led) == [], same
    unsure = changed_attributes(said("a jagged burn"), led)  # "Orrin Vale" is the ledger's Orrin, by words
    assert [(f.subtype, f.severity) for f in unsure] == [("attribute_unsure", "minor")]
    assert changed_attributes(said("a jagged burn", ("E2",)), led) == []  # the judge says it agrees
    assert [f.severity for f in changed_attributes(said("a jagged burn", ("E1",)), led)] == ["minor"]
    assert compare("born in Lisbon", "born in Porto") == "different"  # other proper names
    assert compare("twenty-two", "22") == "same" and compare("blue", "not blue") == "different"


def _finding(**kw: object) -> Finding:
    base = {
        "category": "characters", "subtype": "attribute_changed", "severity": "major", "detector": "rule:attribute",
        "message": "m", "quote": LIE_SENTENCE, "entry_id": 7, "quote_there": "q",
    }  # fmt: skip
    return Finding(**{**base, **kw})  # type: ignore[arg-type]


LIE_SENTENCE = "Orrin wore the coat with two brass buttons to the council."


def test_a_finding_is_repaired_only_on_the_evidence_of_the_text_and_a_check_that_ran() -> None:
    fixed_text = "Orrin wore the coat with six silver buttons to the council."
    ok = Recheck(fixed_text, [], by_model=True, judged={7})
    assert why_open(_finding(), ok) == ""
    # The statement still stands (a rewrite that changed other words; a lazy re-check that says nothing).
    assert "still stands" in why_open(_finding(), Recheck(f"{LIE_SENTENCE} The tide turned.", [], True, {7}))
    assert "still stands" in why_open(
        _finding(quote="Orrin wore the coat ... two brass buttons"), Recheck(LIE_SENTENCE, [], True)
    )
    # The statement is gone but the re-check was the extractor's: nothing says the new text agrees.
    assert "could not run" in why_open(
        _finding(), Recheck(fixed_text, [], False, why_not="no valid answer in two tries")
    )
    # The judge's finding needs a judge that answered and was shown the entry again.
    assert "not shown" in why_open(_finding(detector="judge", subtype="judged"), Recheck(fixed_text, [], True, {3}))
    assert "still finds" in why_open(_finding(), Recheck(fixed_text, [_finding(quote="other words")], True, {7}))
    # A text rule runs on any text: the extractor's re-check is enough for a spelling.
    spelling = _finding(detector="rule:name_variant", subtype="name_variant", quote="the harbor lantern council met")
    assert why_open(spelling, Recheck("the Harbor Lantern Council met", [], False)) == ""
    assert settle([_finding()], Recheck(LIE_SENTENCE, [], True, {7}), 2) == set()


def test_a_seam_is_validated_only_by_checks_that_answered() -> None:
    assert decide([], [], strict=False, title="T").status == "validated"
    assert decide([Fate("repaired", "major", 9)], [], strict=False, title="T").repair_version == 9
    unchecked = decide(
        [], ["", "the judge gave no valid answer (no valid answer in two tries)"], strict=False, title="T"
    )
    assert (unchecked.status, unchecked.validated, unchecked.broken) == ("unchecked", False, None)
    assert "no valid answer" in (unchecked.unchecked_reason or "")
    strict = decide([Fate("repaired", "major", 9)], ["names only: the model is a base model"], strict=True, title="T")
    assert strict.status == "unchecked" and strict.broken and "could not be checked" in strict.broken
    flagged = decide([Fate("open", "major")], ["x"], strict=True, title="T")
    assert (
        flagged.status == "flagged"
        and flagged.unchecked_reason is None
        and "could not be repaired" in (flagged.broken or "")
    )


def test_the_report_says_in_words_what_was_checked_and_by_which_model() -> None:
    base = report(ReportInput(5_000, [], 10, 4, {"fallback": 8}, {}, {BASE_MODEL: 8}))
    assert base["checked"].startswith("names only: the model gives no structured memory")
    assert base["unchecked"]["chunks"] == 8 and "names only" in summary_line(base)
    mixed = report(
        ReportInput(5_000, [], 10, 4, {"model": 6, "fallback": 2}, {"validated": 1, "unchecked": 1},
                    {"no valid answer in two tries": 2}, {"the judge gave no valid answer": 1}, ["judge-model"])
    )  # fmt: skip
    assert "judge-model" in mixed["checked"] and "6 of 8 passages" in mixed["checked"]
    assert mixed["unchecked"] == {
        "chunks": 2,
        "seams": 1,
        "chunk_reasons": {"no valid answer in two tries": 2},
        "seam_reasons": {"the judge gave no valid answer": 1},
    }
