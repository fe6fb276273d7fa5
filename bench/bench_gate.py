"""Time the degeneration gate on answers shaped like a chunk's: what each answer costs the worker.

    .venv/bin/python -m bench.bench_gate [--baseline REF] [--rounds 5]

The answers are the prose fixtures (tests/fixtures/prose) in runs of three paragraphs, every
fourth with a junk case of tests/fixtures/junk.txt in it; each continues the answer before it and
comes with a prompt of forty lines (a brief, an outline, summaries: sentences of the other
fixtures) ending in Quire's request. Prints the best of ``--rounds`` of milliseconds per answer
(process time); with ``--baseline REF``, the same on ``REF``'s ``core.gate`` (a temporary git
worktree) side by side, and whether the two gave the same verdicts.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bookrun import worktree

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

# Run in the tree under test (its own core.gate): the cases from a file, the figures on stdout.
TIMER = """
import hashlib, json, sys, time
from core.gate import gate
cases = json.load(open(sys.argv[1]))
gate(**cases[0])  # the word lists, loaded once per process
times = []
for _ in range(int(sys.argv[2])):
    t = time.process_time()
    verdicts = [gate(**c) for c in cases]
    times.append(time.process_time() - t)
shown = repr([(g.text, [(x.rule, x.text, x.words) for x in g.cuts]) for g in verdicts])
print(json.dumps({"ms": min(times) * 1000 / len(cases), "digest": hashlib.sha256(shown.encode()).hexdigest()}))
"""


def cases(seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    books = [p.read_text() for p in sorted((FIXTURES / "prose").glob("*.txt"))]
    junk = [
        block.split("\n", 1)[1].replace("⟦", "").replace("⟧", "").strip()
        for block in (FIXTURES / "junk.txt").read_text().split("\n== ")[1:]
    ]
    sentences = [s.strip() for b in books for s in b.replace("\n", " ").split(". ") if len(s.split()) > 6]
    out: list[dict[str, object]] = []
    for b in books:
        paras = [p.strip() for p in b.split("\n\n") if p.strip()]
        before = ""
        for i in range(0, len(paras), 3):
            answer = "\n\n".join(paras[i : i + 3])
            if len(out) % 4 == 3:
                answer = answer + "\n\n" + rng.choice(junk)
            lines = ["Book: " + rng.choice(sentences), "Outline:"]
            lines += [f"{n}. {rng.choice(sentences)}" for n in range(1, 21)]
            lines += ["Story so far:"] + [rng.choice(sentences) + "." for _ in range(16)]
            lines.append("(Continue from where it stopped, with about 600 words.)")
            out.append({"answer": answer, "prompt": "\n".join(lines), "before": before})
            before = answer
    return out


def timed(tree: Path, path: Path, rounds: int) -> dict[str, float | str]:
    run = subprocess.run(
        [sys.executable, "-c", TIMER, str(path), str(rounds)],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="a git ref whose core.gate to time beside this tree's")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases(), f)
    path = Path(f.name)
    try:
        n = len(json.loads(path.read_text()))
        new = timed(ROOT, path, args.rounds)
        print(f"{n} answers: this tree {new['ms']:.2f} ms an answer")
        if args.baseline:
            with worktree(args.baseline) as (where, commit):
                old = timed(where, path, args.rounds)
            print(f"{args.baseline} ({commit}): {old['ms']:.2f} ms an answer")
            same = new["digest"] == old["digest"]
            print(f"new / old = {float(new['ms']) / float(old['ms']):.2f}; same verdicts: {same}")
    finally:
        path.unlink()


if __name__ == "__main__":
    main()
