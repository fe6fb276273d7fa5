"""The story memory and the continuity checks as pure rules: what the extractor finds, what a
model's answer must be to count, how the ledger folds and is cut to a budget, and each check
failing on real text (and passing on text that agrees)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

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
from core.extractor import extract, merge, proper_names
from core.memory import ChunkMemory, Entry, fold, parse_memory
from core.names import mentions
from core.recall import Summary, build_context, judge_entries
from core.repair import Recheck, settle, why_open
from core.seam import Fate, decide
from core.values import compare
from tests import fake_llm

PASSAGE = (
    "Captain Mara Quell checked the brass compass on her left wrist before the Kestrel left the harbour. "
    "The river was calm that morning. Quell laughed at the gulls.\n\n"
    "She met Ishmael at the Spouter Inn in New Bedford, where the landlord kept a ledger bound in green "
    'leather. "Tell me, Holmes," said Watson, "what do you make of it?" However, the sea was grey.'
)


def test_the_extractor_finds_every_proper_name_with_the_sentence_that_introduced_it() -> None:
    names = {n: (s, t) for n, s, t in proper_names(PASSAGE)}
    assert set(names) == {"Captain Mara Quell", "Kestrel", "Ishmael", "Spouter Inn", "New Bedford", "Holmes", "Watson"}
    assert names["Captain Mara Quell"] == (
        "Captain Mara Quell checked the brass compass on her left wrist before the Kestrel left the harbour.",
        "person",
    )
    assert names["Ishmael"][0].startswith("She met Ishmael")  # a name met once is a name
    # Sentence openers are not names ("The", "However", "Tell"), nor is a name's part ("Quell").
    mem = extract(PASSAGE)
    assert {e.name for e in mem.entities} == set(names) and mem.summary.startswith("Captain Mara Quell")


def _answer(**kw: object) -> str:
    base = {
        "summary": "Mara Quell prepares to sail; Ishmael meets a landlord.",
        "entities": [
            {
                "name": "Mara Quell",
                "type": "person",
                "description": "a ship's captain",
                "quote": "Captain Mara Quell checked the brass compass",
                "attributes": [
                    {
                        "attribute": "compass",
                        "value": "brass, on her left wrist",
                        "quote": "the brass compass on her left wrist",
                    }
                ],
            }
        ],
        "threads_opened": [
            {"thread": "what the ledger holds", "quote": "the landlord kept a ledger bound in green leather"}
        ],
    }
    return json.dumps({**base, **kw})


def test_a_valid_answer_counts_and_the_extractor_completes_it() -> None:
    parsed = parse_memory("Here you go: " + _answer(), PASSAGE)
    assert parsed.dropped == [] and parsed.memory.entities[0].attributes[0].value == "brass, on her left wrist"
    mem, added = merge(parsed.memory, PASSAGE)
    # The model left out names the text plainly has: merged in, never replacing the model's own.
    assert {"Ishmael", "Spouter Inn", "New Bedford", "Kestrel"} <= set(added)
    assert "Captain Mara Quell" not in added and mem.entities[0].description == "a ship's captain"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("no json at all", "no JSON object"),
        ('{"summary": "x", "entities": [', "no JSON object|invalid JSON"),
        ('{"entities": []}', "schema error"),
        (
            _answer(
                entities=[{"name": "Mara Quell", "quote": "she sailed to Lisbon in a storm"}],
                threads_opened=[{"thread": "x", "quote": "words that are not there at all"}],
            ),
            "not in the passage",
        ),
    ],
)
def test_an_invalid_answer_is_refused_with_what_is_wrong(raw: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_memory(raw, PASSAGE)


def test_items_with_false_quotes_or_unknown_refs_are_dropped_and_listed() -> None:
    raw = _answer(
        facts=[{"fact": "The Kestrel is red", "quote": "the Kestrel was painted red"}],
        contradictions=[
            {"category": "characters", "known": "E9", "quote": "the brass compass on her left wrist"},
            {"category": "timeline", "known": "E2", "quote": "The river was calm that morning"},
        ],
    )
    parsed = parse_memory(raw, PASSAGE, known_refs={"E2"})
    assert parsed.memory.facts == [] and [c.known for c in parsed.memory.contradictions] == ["E2"]
    assert len(parsed.dropped) == 2 and "not a ref it was shown" in parsed.dropped[1]


def test_the_judges_agreements_count_only_for_entries_it_was_shown() -> None:
    parsed = parse_memory(_answer(agrees=["E2", "[e3]", "E9"]), PASSAGE, known_refs={"E2", "E3"})
    assert parsed.memory.agrees == ["E2", "E3"] and parsed.memory.agreed == {2, 3}
    assert any("agrees 'E9'" in d for d in parsed.dropped)


def _e(id: int, kind: str, key: str, value: str, order: int, **kw: object) -> Entry:
    return Entry(
        id=id,
        kind=kind,
        key=key,
        name=kw.pop("name", key.title()),
        value=value,
        quote=kw.pop("quote", value),
        doc_order=order,
        **kw,
    )  # type: ignore[arg-type]


def test_the_ledger_folds_to_what_holds_after_it() -> None:
    led = fold(
        [
            _e(1, "entity", "mara quell", "a captain", 2, etype="person"),
            _e(2, "attribute", "mara quell", "brass", 2, attribute="compass"),
            _e(5, "attribute", "mara quell", "lost overboard", 7, attribute="compass"),
            _e(3, "thread", "who sent the letter", "who sent the letter", 3),
            _e(6, "resolved", "the letter's sender", "who sent the letter", 8),
            _e(4, "thread", "the missing ledger", "the missing ledger", 4),
        ]
    )
    mara = led.entities["mara quell"]
    assert mara.attributes["compass"].value == "lost overboard" and mara.last_seen == 7
    assert list(led.open_threads) == ["the missing ledger"] and led.size == 6


def test_the_memory_is_cut_to_its_budget_by_rules() -> None:
    entries = [_e(1, "entity", "mara quell", "the captain", 0, etype="person")]
    entries += [_e(10 + i, "entity", f"sailor {i}", "a sailor of the crew " * 3, 1 + i) for i in range(60)]
    led = fold(entries)
    roomy = build_context(led, [], named="", budget=100_000)
    assert len(roomy.entities) == 61 and roomy.omitted["entities"] == 0  # all of them while they fit
    tight = build_context(led, [], named="a passage about Mara Quell", budget=600)
    assert tight.omitted["entities"] > 0
    assert tight.entities[0].startswith("Mara Quell (person)")  # named in the brief: kept, though oldest
    kept = [int(line.split()[1]) for line in tight.entities[1:]]
    assert kept == sorted(kept) and min(kept) > 30  # then the most recently active, in their order
    summaries = [Summary("chapter", f"C{i}", "what happened " * 30, i) for i in range(20)]
    ctx = build_context(led, summaries, named="", budget=600)
    assert ctx.summaries[-1].startswith("Chapter C19") and ctx.omitted["summaries"] > 0
    assert tight.tokens <= 600 and ctx.tokens <= 600


LEDGER = fold(
    [
        _e(1, "entity", "harbor lantern council", "the town's governing body", 0, name="Harbor Lantern Council"),
        _e(2, "entity", "elspeth", "a keeper", 0, name="Elspeth", etype="person"),
        _e(3, "attribute", "elspeth", "grey", 0, attribute="eyes", name="Elspeth", quote="Elspeth's grey eyes"),
        _e(4, "attribute", "elspeth", "the north tower", 0, attribute="location", name="Elspeth"),
        _e(5, "resolved", "who lit the lamp", "who lit the lamp", 1, quote="It was Elspeth who lit the lamp"),
        _e(6, "event", "the great storm", "the great storm", 1, when="1851", quote="the great storm of 1851"),
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


def test_the_scripted_model_declares_each_setting_once() -> None:
    # A field declared twice keeps its last default silently: "judge_mode" was "names", then "valid".
    tree = ast.parse(Path(fake_llm.__file__).read_text())
    state = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FakeState")
    names = [n.target.id for n in state.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    assert fake_llm.FakeState().judge_mode == "names"  # the judge that names what it finds, as tests mean it


# -- names as words, values that differ, repairs on evidence, seams that say what ran (issue 26) --


def test_names_followed_by_punctuation_or_at_a_line_start_are_shown_to_the_judge() -> None:
    led = fold(
        [
            _e(1, "entity", "mara", "a pilot", 0, name="Mara", etype="person"),
            _e(2, "attribute", "mara", "grey", 0, attribute="eyes", name="Mara"),
            _e(3, "entity", "tobias wren", "a clerk", 0, name="Tobias Wren", etype="person"),
        ]
    )
    for passage in (
        "The door opened on Mara. Nobody spoke.",
        "Behind her stood Mara, silent as ever.",
        "He borrowed Mara's compass for the crossing.",
        "Run, Mara! The tide is turning.",
        "“Do not wait for me,” said Mara” to nobody in particular.",
        "The wind rose over the quay.\nMara went down to the boats.",
        "They all said “Mara” as if it were a charm.",
    ):
        refs = [ref for ref, _ in judge_entries(led, passage)]
        assert refs[:2] == ["E1", "E2"], passage
    assert [r for r, _ in judge_entries(led, "Marathon runners crossed the bridge.")] == []  # a longer word
    assert [r for r, _ in judge_entries(led, "Wren and Tobias met.")] == []  # a name's words, not in its order
    assert [r for r, _ in judge_entries(led, "That was Tobias Wren's ledger, not hers.")] == ["E3"]
    assert mentions("Mara", "Mara's") and mentions("Tobias Wren", "TOBIAS  WREN,") and not mentions("Mara", "Amara")
    # The prompt's named entities are found the same way (the brief names her with a comma).
    ctx = build_context(
        fold([*led.by_ref().values(), *(_e(10 + i, "entity", f"sailor {i}", "x " * 40, 1) for i in range(40))]),
        [],
        named="Mara, at the helm",
        budget=500,
    )
    assert ctx.entities[0].startswith("Mara (person)")


def test_a_sentence_start_and_an_article_are_never_a_variant() -> None:
    led = fold([_e(1, "entity", "harbour board", "the port's masters", 0, name="the Harbour Board")])
    assert name_variants("The Harbour Board met at dawn. “The Harbour Board,” she said.", led) == []
    text = "The Harbour Board met at dawn. Later the harbour board voted. Harbour board members left."
    found = name_variants(text, led)
    assert [f.fix for f in found] == [("harbour board", "Harbour Board"), ("Harbour board", "Harbour Board")]
    fixed, done = apply_fixes(text, found)
    assert fixed == "The Harbour Board met at dawn. Later the Harbour Board voted. Harbour Board members left."
    assert done == found
    # A lower-case established name is written capitalised at a sentence's start, and left so.
    led = fold([_e(2, "entity", "van der berg", "a family", 0, name="van der Berg")])
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
            _e(1, "entity", "orrin", "a smith", 0, name="Orrin", etype="person"),
            _e(2, "attribute", "orrin", before, 0, attribute="detail", name="Orrin", quote=f"Orrin had {before}."),
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
            _e(1, "entity", "orrin", "a smith", 0, name="Orrin", etype="person"),
            _e(2, "attribute", "orrin", "a long scar", 0, attribute="mark", name="Orrin"),
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
