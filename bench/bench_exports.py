"""Time and memory of each export format on a whole book.

    .venv/bin/python -m bench.bench_exports [--words 500000]

A book laid out as the finalizer assembles one (10 parts, 100 chapters, 200 sections, paragraphs of
about 60 words), exported as txt, html, docx and epub; prints seconds, output size and the peak
of Python allocations (tracemalloc) for each. The API builds exports in a thread, per request.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from core.layout import Block, assemble
from core.text import count_words
from services.exports import render

VOCAB = (
    "the of and to in a is that for it as was with be by on not river archive lantern quiet harbor method "
    "signal patient ledger orchard granite measure window current letter station valley thread record"
).split()


def book(words: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    parts, chapters, sections = 10, 10, 2
    per_section = words // (parts * chapters * sections)
    blocks: list[Block] = []
    for p in range(parts):
        blocks.append(Block(2, f"Part {p + 1}", []))
        for c in range(chapters):
            blocks.append(Block(3, f"Chapter {p * chapters + c + 1}", []))
            for s in range(sections):
                paras, n = [], 0
                while n < per_section:
                    k = min(60, per_section - n)
                    paras.append(" ".join(rng.choice(VOCAB) for _ in range(k)).capitalize() + ".")
                    n += k
                blocks.append(Block(4, f"Section {p + 1}.{c + 1}.{s + 1}", ["\n\n".join(paras)]))
    return assemble("A Book of Lanterns", words, blocks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=500_000)
    a = ap.parse_args()
    text = book(a.words)
    print(f"book: {count_words(text):,} words, {len(text.encode()):,} bytes of Markdown")
    for fmt in ("txt", "html", "docx", "epub"):
        tracemalloc.start()
        t0 = time.perf_counter()
        out = render(text, fmt, "A Book of Lanterns", "bench")
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{fmt:<5} {seconds:7.2f} s  {len(out):>12,} bytes  peak {peak / 2**20:7.1f} MiB")


if __name__ == "__main__":
    main()
