"""Where sentences end: the rule the gate's repeat, meta and unfinished rules stand on, and the
document-wide repeats (``core.repeats``).

A sentence ends at . ! ? … before a space (not after "Mr" or an initial), or at 。！？ (CJK puts no
space after them); closing quotes and brackets stay with their sentence.
"""

from __future__ import annotations

import re

# The pattern opens on the end mark itself, so the engine skips to the next one at C speed; the
# abbreviations are looked behind from there ("Mr." ends nothing; "." is the mark just matched).
_ABBREV = r"(?<!\bMr.)(?<!\bMrs.)(?<!\bMs.)(?<!\bDr.)(?<!\bSt.)(?<!\bNo.)(?<!\bvs.)(?<!\betc.)(?<!\b[A-Z].)"
SENTENCE_END = re.compile(
    r"[.!?…。！？](?:(?<=[.!?…])" + _ABBREV + r"[.!?…]*[\"'”’)\]_*]*(?=\s|$)|(?<=[。！？])[。！？]*[」』）】\"'”’]*)"
)
CLOSERS = "\"'”’)]_*»」』）】"
# A line ends as a sentence does, or breaks off as dialogue does ("But your client--").
ENDS_SENTENCE = re.compile(r"(?:[.!?…。！？]|--|—|–)[" + re.escape(CLOSERS) + r"]*\s*$")


def sentences(para: str) -> list[str]:
    """A paragraph's sentences, as they are written (joined with spaces they give it back)."""
    out, start = [], 0
    for m in SENTENCE_END.finditer(para):
        out.append(para[start : m.end()].strip())
        start = m.end()
    if para[start:].strip():
        out.append(para[start:].strip())
    return [s for s in out if s]
