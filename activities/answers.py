"""A model's answers for part of a chunk, kept as the chunk's attempts: a selection's rewrite, a
coverage retry's paragraph, a continuity or seam repair's paragraph and the extension made after
it, a stitch's bridge. Each is stored, used or not, with its words as the model wrote them and
every cut (the gate's; what the document already says elsewhere, cut when a used answer's
paragraphs and sentences are claimed; all it kept, when it was not used): the job's word account
(``db.counts.word_account``) sums them as it sums a chunk's writes, so that every word a model
wrote for the document is either kept or cut, and said which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from activities.gating import claim
from core.gate import Cut, Gated
from core.repeats import drop_repeats, fingerprint
from core.scope import whole_sentences
from core.text import count_words
from db.manuscript import Chunk, ChunkAttempt
from db.session import JobTx

CUTS_IN_EVENT = 20  # in a chunk event (the attempt's row keeps them all)


@dataclass
class Answer:
    """A model's answer for part of a chunk, as the gate left it (``gated.text``: what was put into
    the text), and whether the text it ends in keeps it (``problems``: why not)."""

    kind: str  # the attempt's kind ("repair": a repair's rewrite or extension, a bridge)
    part: str  # "rewrite" | "extension" | "bridge": what it was asked for (in the attempt's event)
    call_id: int | None
    gated: Gated
    used: bool = True
    problems: list[str] = field(default_factory=list)

    def drop(self, why: str) -> None:
        """Not used after all (the repair it belongs to was given up, or a later answer replaced it)."""
        if self.used:
            self.used, self.problems = False, [*self.problems, why]


def sentences_only(gated: Gated, *, start: bool) -> Gated:
    """A model's continuation without a fragment before its first sentence (when ``start``: it
    must start one) or after its last: those cut and recorded (``core.scope.whole_sentences``)."""
    kept, cuts = whole_sentences(gated.text, start=start)
    return Gated(kept, [*gated.cuts, *cuts], gated.words_in)


async def store_answer(
    tx: JobTx,
    chunk: Chunk,
    *,
    kind: str,
    call_id: int | None,
    gated: Gated,
    text_after: str,
    used: bool,
    problems: list[str],
    edit: int | None = None,
    part: str | None = None,
    unused_rule: str = "out_of_scope",
) -> int:
    """A model's answer for part of ``chunk`` as the chunk's next attempt: the answer's words, what
    the gate cut and, an answer not used, everything it kept cut too (rule ``unused_rule``, why in
    its event). The word account counts it as any chunk's answer. Returns its number."""
    cuts = list(gated.cuts)
    if not used and gated.text.strip():
        cuts.append(Cut(unused_rule, gated.text, count_words(gated.text)))
    attempt_no = chunk.attempts + 1
    before, after = chunk.word_count, count_words(text_after)
    tx.session.add(
        ChunkAttempt(
            job_id=tx.job_id,
            chunk_id=chunk.id,
            attempt_no=attempt_no,
            kind=kind,
            llm_call_id=call_id,
            words_asked=0,  # not a length asked for: the model's compliance is measured on writes
            added_text=gated.text if used else "",
            text_after=text_after,
            words_before=before,
            words_added=after - before,
            words_after=after,
            words_model=gated.words_in,
            cuts=[c.record() for c in cuts],
        )
    )
    chunk.attempts = attempt_no
    cut = Gated("", cuts, gated.words_in)
    tx.event(
        "chunk",
        kind,
        {
            "chunk": chunk.ordinal,
            "attempt": attempt_no,
            "edit": edit,
            **({"part": part} if part else {}),
            "llm_call_id": call_id,
            "used": used,
            "problems": problems[:8],
            "words_model": gated.words_in,
            "words_cut": cut.words_cut,
            "cut_by_rule": cut.by_rule(),
            "cuts": cut.records()[:CUTS_IN_EVENT],
            "words_in": before,
            "words_out": after,
        },
    )
    return attempt_no


async def store_answers(
    tx: JobTx,
    chunk: Chunk,
    answers: Sequence[Answer],
    text: str,
    *,
    edit: int | None = None,
) -> tuple[str, list[int]]:
    """The answers a new version of ``chunk`` (``text``) is made of, and those it could not use,
    as the chunk's attempts, in order: a used one's paragraphs and sentences claimed (what the
    document already says elsewhere cut from it, and from ``text``: the chunk's own words are its
    own to say again), an unused one all cut (rule ``not_used``). Returns the text kept and the
    attempts' numbers. With ``text`` the chunk's text as it was, nothing is made of them: none is
    used."""
    lost: set[int] = set()
    claimed: list[Gated] = []
    for a in answers:
        gated = a.gated
        if a.used:
            gated = await claim(tx, chunk, chunk.attempts + 1 + len(claimed), gated, free=[chunk.id])
            lost |= {fingerprint(k, c.text) for c in gated.cuts[len(a.gated.cuts) :] for k in ("paragraph", "sentence")}
        claimed.append(gated)
    kept = drop_repeats(text, lost)[0] if lost else text
    numbers = []
    for a, gated in zip(answers, claimed, strict=True):
        numbers.append(
            await store_answer(
                tx,
                chunk,
                kind=a.kind,
                call_id=a.call_id,
                gated=gated,
                text_after=kept,
                used=a.used,
                problems=a.problems,
                edit=edit,
                part=a.part,
                unused_rule="not_used",
            )  # fmt: skip
        )
    return kept, numbers
