"""The degeneration gate as a process of its own: ``python -m core.gate_process``.

The worker runs the gate here, off its event loop (``activities.gating``): one JSON request a line
on stdin (``answer``, ``prompt``, ``source``, ``before``, ``fragment``), one JSON verdict a line on
stdout (``text``, ``cuts`` as [rule, text, words], ``words_in``), in order. It imports the gate and
its word lists only: a few tens of MiB, not the worker's hundreds.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from core.gate import Cut, Gated, gate
from core.lexicon import FOREIGN_LEXICONS, lexicon


def verdict(g: Gated) -> dict[str, Any]:
    return {"text": g.text, "cuts": [[c.rule, c.text, c.words] for c in g.cuts], "words_in": g.words_in}


def gated(v: dict[str, Any]) -> Gated:
    return Gated(v["text"], [Cut(rule, text, words) for rule, text, words in v["cuts"]], v["words_in"])


def main() -> None:
    for lang in ("en", "en-common", *FOREIGN_LEXICONS):  # before the first answer, not during it
        lexicon(lang)
    out = sys.stdout
    for line in sys.stdin:
        out.write(json.dumps(verdict(gate(**json.loads(line))), ensure_ascii=False) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
