"""The draft the job page shows: the document's pieces (one assembly with finalize's), only the
headings with text below while a job runs, and a finished job's pieces ending where its output ends."""

from __future__ import annotations

from core.layout import Block, Piece, assemble, pieces
from services.views import _as_far_as, _with_text_below

BLOCKS = [
    Block(2, "One", ["First. Second.\n", " Third. Fourth. "], node=1, chunks=(0, 1)),
    Block(3, "Empty", [""], node=2, chunks=(2,)),
    Block(2, None, ["Top-up."], node=3, chunks=(3,)),
]


def test_the_pieces_joined_are_the_document() -> None:
    ps = pieces("T", 1000, BLOCKS)
    doc = "# T\n\n## One\n\nFirst. Second.\n\nThird. Fourth.\n\n### Empty\n\nTop-up.\n"
    assert "\n\n".join(p.markdown for p in ps) + "\n" == assemble("T", 1000, BLOCKS) == doc
    assert [(p.heading, p.node, p.chunk) for p in ps] == [
        (1, None, None),
        (2, 1, None),
        (0, 1, 0),
        (0, 1, 1),
        (3, 2, None),
        (0, 3, 3),
    ]
    assert assemble("T", 100, BLOCKS) == "First. Second.\n\nThird. Fourth.\n\nTop-up.\n"  # too short for headings


def test_a_running_draft_shows_only_the_headings_with_text_below() -> None:
    def titles(ps: list[Piece]) -> list[str]:
        return [p.text for p in _with_text_below(ps)]

    book = [Piece("T", 1), Piece("Ch1", 2, 1), Piece("S1", 3, 2), Piece("x", chunk=0), Piece("S2", 3, 3)]
    book += [Piece("Ch2", 2, 4), Piece("S3", 3, 5)]
    assert titles(book) == ["T", "Ch1", "S1", "x"]
    assert titles([*book, Piece("y", chunk=1)]) == ["T", "Ch1", "S1", "x", "Ch2", "S3", "y"]
    assert titles(book[:3]) == []


def test_a_finished_draft_ends_where_its_output_was_cut() -> None:
    ps = pieces("T", 1000, BLOCKS)
    cut = _as_far_as(ps, "# T\n\n## One\n\nFirst. Second.\n\nThird.\n")  # finalize trimmed it to its maximum
    assert [(p.text, p.chunk) for p in cut] == [("T", None), ("One", None), ("First. Second.", 0), ("Third.", 1)]
    assert _as_far_as(ps, assemble("T", 1000, BLOCKS)) == ps
    assert _as_far_as(ps, "Another document.\n") == ps  # not cut from these pieces: shown whole
