"""The story memory as pure rules: what the extractor finds, what a model's answer must be to
count, how the ledger folds and is cut to a budget, and which entries the judge is shown for a
passage that names them. The continuity checks on that memory: test_continuity.py."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from core.extractor import extract, merge, proper_names
from core.memory import fold, parse_memory
from core.names import mentions
from core.recall import Summary, build_context, judge_entries
from tests import fake_llm
from tests.helpers import entry

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


def test_the_ledger_folds_to_what_holds_after_it() -> None:
    led = fold(
        [
            entry(1, "entity", "mara quell", "a captain", 2, etype="person"),
            entry(2, "attribute", "mara quell", "brass", 2, attribute="compass"),
            entry(5, "attribute", "mara quell", "lost overboard", 7, attribute="compass"),
            entry(3, "thread", "who sent the letter", "who sent the letter", 3),
            entry(6, "resolved", "the letter's sender", "who sent the letter", 8),
            entry(4, "thread", "the missing ledger", "the missing ledger", 4),
        ]
    )
    mara = led.entities["mara quell"]
    assert mara.attributes["compass"].value == "lost overboard" and mara.last_seen == 7
    assert list(led.open_threads) == ["the missing ledger"] and led.size == 6


def test_the_memory_is_cut_to_its_budget_by_rules() -> None:
    entries = [entry(1, "entity", "mara quell", "the captain", 0, etype="person")]
    entries += [entry(10 + i, "entity", f"sailor {i}", "a sailor of the crew " * 3, 1 + i) for i in range(60)]
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


def test_the_scripted_model_declares_each_setting_once() -> None:
    # A field declared twice keeps its last default silently: "judge_mode" was "names", then "valid".
    tree = ast.parse(Path(fake_llm.__file__).read_text())
    state = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FakeState")
    names = [n.target.id for n in state.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    assert fake_llm.FakeState().judge_mode == "names"  # the judge that names what it finds, as tests mean it


# -- names as words: what the judge is shown (issue 26) -----------------------------------------


def test_names_followed_by_punctuation_or_at_a_line_start_are_shown_to_the_judge() -> None:
    led = fold(
        [
            entry(1, "entity", "mara", "a pilot", 0, name="Mara", etype="person"),
            entry(2, "attribute", "mara", "grey", 0, attribute="eyes", name="Mara"),
            entry(3, "entity", "tobias wren", "a clerk", 0, name="Tobias Wren", etype="person"),
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
        fold([*led.by_ref().values(), *(entry(10 + i, "entity", f"sailor {i}", "x " * 40, 1) for i in range(40))]),
        [],
        named="Mara, at the helm",
        budget=500,
    )
    assert ctx.entities[0].startswith("Mara (person)")
