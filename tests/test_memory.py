"""The story memory and the continuity checks as pure rules: what the extractor finds, what a
model's answer must be to count, how the ledger folds and is cut to a budget, and each check
failing on real text (and passing on text that agrees)."""

from __future__ import annotations

import json

import pytest

from core.coherence import ReportInput, report
from core.continuity import (
    apply_fixes,
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
from core.recall import Summary, build_context

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
