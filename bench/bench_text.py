"""Time the word rule and trimming on whole documents.

    .venv/bin/python -m bench.bench_text

``count_words`` runs on whole documents (up to 500,000 words) in the finalizer, the API and the
length checks; ``trim_to_words`` runs on a whole document when it overshoots. Prints the best of
``--repeat`` runs of each, on an English-like text and on one with Chinese paragraphs mixed in.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from core.text import count_words, trim_to_words

VOCAB = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but "
    "river archive lantern quiet harbor method signal patient ledger orchard granite measure café naïve "
    "state-of-the-art O'Brien 1914 3.14 — ... “quoted” (aside) well-known"
).split()
CJK = "的一是不了人我在有他这中大来上们到说国和地也子时道出要于就下得可你年生自会那后能对着事"


def english(words: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    paras: list[str] = []
    n = 0
    while n < words:
        k = min(rng.randint(60, 140), words - n)
        toks = [rng.choice(VOCAB) for _ in range(k)]
        for i in range(9, k, rng.randint(8, 16)):
            toks[i] += "."
        paras.append(" ".join(toks) + ".")
        n += sum(1 for t in toks if any(ch.isalnum() for ch in t))  # "—" and "..." are no words
    return "\n\n".join(paras)


def mixed(words: int, seed: int = 2) -> str:
    """About a tenth of the words are Chinese paragraphs (one ideograph a word, 。 ends)."""
    rng = random.Random(seed)
    out = english(words * 9 // 10, seed).split("\n\n")
    for _ in range(words // 10 // 200):
        sent = ["".join(rng.choice(CJK) for _ in range(rng.randint(10, 30))) + "。" for _ in range(10)]
        out.insert(rng.randrange(len(out)), "".join(sent))
    return "\n\n".join(out)


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    for name, text in (("english", english(a.words)), ("mixed-cjk", mixed(a.words))):
        n = count_words(text)
        t_count = best(lambda text=text: count_words(text), a.repeat)
        t_trim = best(lambda text=text, n=n: trim_to_words(text, int(n * 0.9), int(n * 0.85)), a.repeat)
        print(
            f"{name:9}: {len(text) / 1e6:.1f} M chars, {n:,} words; count_words {t_count * 1000:.0f} ms; "
            f"trim_to_words to 90% {t_trim * 1000:.0f} ms (CPU time, best of {a.repeat})"
        )


if __name__ == "__main__":
    main()
