"""What an author's edit asks a model: a selection rewritten (and asked again, told what was wrong
with the last answer), whether a text carries each instruction and key point (the coverage
judge), and one paragraph rewritten to carry what it missed."""

from __future__ import annotations

from activities.prompts import SYSTEM
from core.coverage import Item
from core.text import tail_words

COVERAGE_SYSTEM = "You check whether a text does what its author asked of it. You answer with one JSON object only."


def rewrite_messages(
    before: str, passage: str, after: str, instruction: str, words: int, problems: list[str] | None = None
) -> list[dict[str, str]]:
    """Rewrite a passage its author selected, following their instruction; the text around it
    stays. ``problems``: what was wrong with the last answer (the retry is told)."""
    around = [f'The document reads, just before the passage:\n"…{tail_words(before, 120)}"'] if before.strip() else []
    if after.strip():
        around.append(f'and just after it:\n"{" ".join(after.split()[:120])}…"')
    msgs = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": "\n\n".join(around)
            + f'\n\nThe passage to rewrite:\n"""\n{passage.strip()}\n"""\n\n'
            + f"Rewrite only that passage, as its author asks: {instruction.strip()}\n"
            + "It must still join what comes before and after it: start and end where the passage does (in the "
            "middle of a sentence if it does, on a sentence's end if it does). Do not repeat the text around it, "
            f"and do not comment on it. Write only the new passage, about {words} words.",
        },
    ]
    if problems:
        msgs.append(
            {
                "role": "user",
                "content": "Your last answer could not be used: "
                + "; ".join(p[:300] for p in problems[:4])
                + f". Write the new passage again, only the passage, about {words} words.",
            }
        )
    return msgs


def coverage_messages(text: str, items: list[Item], error: str | None = None) -> list[dict[str, str]]:
    """The coverage judge: for each numbered item, does the text carry it (a key point: the text
    states it; an instruction: the text reads as following it), with the sentence that does."""
    listed = "\n".join(
        f"{i}. ({'instruction' if it.source == 'instruction' else 'key point'}) {it.text.strip()}"
        for i, it in enumerate(items, start=1)
    )
    user = (
        f'The text:\n"""\n{text.strip()}\n"""\n\nItems:\n{listed}\n\n'
        "For each item, say whether the text carries it: a key point, if the text states it; an instruction, "
        "if the text reads as written following it. Answer with one JSON object: "
        '{"items":[{"item":<number>,"covered":true|false,"quote":"<the sentence of the text that carries it, '
        'copied exactly; empty if not covered>","why":"<one short sentence>"}]}, one entry per item. '
        "Say covered only when you can quote the text."
    )
    msgs = [{"role": "system", "content": COVERAGE_SYSTEM}, {"role": "user", "content": user}]
    if error:
        msgs.append(
            {
                "role": "user",
                "content": f"Your previous answer was not valid: {error[:500]}. "
                "Answer again with the JSON object only.",
            }
        )
    return msgs


def cover_messages(
    paragraph: str, items: list[Item], words: int, problems: list[str] | None = None
) -> list[dict[str, str]]:
    """One paragraph rewritten so that it also carries what the text missed, keeping the rest."""
    asks = "\n".join(
        f"- {'follow the instruction' if it.source == 'instruction' else 'state the key point'}: {it.text.strip()}"
        for it in items
    )
    msgs = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f'This paragraph of the document:\n"""\n{paragraph.strip()}\n"""\n\n'
            f"does not yet do what its author asked:\n{asks}\n\n"
            "Rewrite the paragraph so that it does, keeping what it says and how it joins the text around it "
            f"(whole sentences), in about {words} words. Write only the paragraph.",
        },
    ]
    if problems:
        msgs.append({"role": "user", "content": "Your last answer could not be used: " + "; ".join(problems[:4])})
    return msgs
