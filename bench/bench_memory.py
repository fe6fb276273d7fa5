"""The story memory and the continuity checks at work, on a book with facts planted once (a name
and a detail) and contradictions of them planted inside a chapter, across a seam written in
parallel and chapters later (the scripted model writes them, tests/fake_llm.py):

    .venv/bin/python -m bench.bench_memory [--words 60000] [--tokens-per-s 400] [--parallelism 6]
        [--judge names|weak] [--recheck none|lazy] [--repair fix|stubborn|cosmetic] [--baseline REF]

``--judge weak``: the memory answers list every changed detail as an attribute and never name a
contradiction (the rules must find them). ``--recheck lazy``: the memory call that checks a
repair leaves out the detail it just changed (a repair must show its evidence in the text).

It prints how many later chunk prompts carried each planted name and detail; for the planted
contradictions: caught, made consistent (gone from the document), reported open (still there, a
finding says so), unchecked (still there, the check that could have seen it did not answer, and
says so), unreported (still there, nothing says so: must be 0) and false repairs (marked
repaired while the statement stands in the document: must be 0, counted over every finding);
tokens in / out by purpose (what the memory costs), and the wall time beside a run of the same
job on ``REF``'s code (a git worktree) when ``--baseline`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import psycopg

from bench.bench_book import _line, _result_line, _worktree, run_job
from core.repair import stands
from db.session import plain_url

MODELS = {
    ("names", "none"): "cooperative (its judge names each contradiction)",
    ("weak", "none"): "weak (lists changed details, never names a contradiction)",
    ("names", "lazy"): "lazy (its re-check of a repair leaves out the detail it changed)",
    ("weak", "lazy"): "weak and lazy",
}


# Facts planted once each (a name and a detail) and contradictions of them: inside a chapter (the
# lie a few chunks after the fact), across a seam written in parallel (the next chapter's opening)
# and far away (chapters later).
FACTS = [
    ("Captain Mara Quell", "compass", "brass compass on her left wrist", "checked the {} before dawn", 1, 1),
    ("Tobias Wren", "ledger", "ledger bound in green leather", "opened the {} at the harbour office", 2, 1),
    ("Ilse Varga", "lantern", "lantern with a cracked red lens", "carried the {} up the tower stairs", 4, 1),
    ("Orrin Blackwood", "coat", "coat with six silver buttons", "wore the {} to the council", 7, 1),
    ("Edda Thorn", "hand", "two fingers on her left hand", "raised the {} to the harbour master", 3, 1),
]
LIES = [  # (which fact, the wrong detail, chapter, its write within the chapter)
    (2, "lantern with a clear blue lens", 4, 3),  # inside a chapter
    (3, "coat with two brass buttons", 8, 1),  # the next chapter, written in parallel
    (0, "silver compass on her right wrist", 10, 2),  # chapters later
    (4, "ten fingers on her left hand", 3, 3),  # a number, inside a chapter (most words the same)
    (1, "ledger not bound in green leather", 5, 1),  # a negation, two chapters later, in parallel
]


def _plants() -> tuple[list[dict[str, Any]], list[str], list[str]]:
    plants, facts, lies = [], [], []
    for name, attr, value, shape, chapter, index in FACTS:
        sentence = f"{name} {shape.format(value)}."
        facts.append(sentence)
        plants.append(
            {
                "sentence": sentence,
                "entity": name,
                "attribute": attr,
                "value": value,
                "chapter": chapter,
                "index": index,
            }
        )
    for fact, value, chapter, index in LIES:
        name, attr, _, shape, _, _ = FACTS[fact]
        sentence = f"{name} {shape.format(value)}."
        lies.append(sentence)
        plants.append(
            {
                "sentence": sentence,
                "entity": name,
                "attribute": attr,
                "value": value,
                "chapter": chapter,
                "index": index,
            }
        )
    return plants, facts, lies


async def memory(
    words: int, tokens_per_s: float, parallelism: int, baseline: str | None, judge: str, recheck: str, repair: str
) -> None:
    plants, facts, lies = _plants()
    seen: dict[str, Any] = {}

    async def measure(f: dict[str, Any]) -> None:
        seen.update(await _memory_facts(f["db_url"], facts, lies))

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(plants, fh)
    args = ["--ratio", "1.0", "1.1", "--tokens-per-s", str(tokens_per_s), "--plants", fh.name]
    args += ["--judge", judge, "--repair", repair] + (["--recheck", recheck] if recheck != "none" else [])
    f = await run_job(words, args, {"parallelism": parallelism}, measure)
    os.unlink(fh.name)
    print(f"model: {MODELS.get((judge, recheck), f'judge {judge}, re-check {recheck}')}; repairs: {repair}")
    print(_line(f, words))
    m = seen
    print(
        f"carry: {m['carried']} of {m['eligible']} later chunk prompts carried the planted name and detail "
        f"({100 * m['carried'] / max(1, m['eligible']):.1f}%)"
    )
    for lie, fate in zip(lies, m["lies"], strict=True):
        print(f"  contradiction {lie[:60]!r}: {fate['verdict']}{' ' + fate['where'] if fate['where'] else ''}")
    count = {k: sum(1 for x in m["lies"] if x["verdict"] == k) for k in VERDICTS}
    caught = sum(1 for x in m["lies"] if x["caught"])
    false_lies = sum(1 for x in m["lies"] if x["false_repair"])
    print(
        f"contradictions planted {sum(count.values())}: caught {caught}, made consistent {count['made consistent']}, "
        f"reported open {count['reported open']}, unchecked {count['unchecked']}, "
        f"UNREPORTED {count['UNREPORTED']}; false repairs {m['false_repairs']} of {m['repaired']} repaired "
        f"(marked repaired, the statement still in the document; of the planted ones: {false_lies}); "
        f"findings in all {m['findings']}"
    )
    print(f"memory states: {m['states']}; seams: {m['seams']}")
    print(
        f"tokens in {m['tokens_in']:,} / out {m['tokens_out']:,} = {m['tokens_in'] / max(1, m['tokens_out']):.2f}; "
        + ", ".join(f"{k} {i:,}/{o:,}" for k, (i, o) in sorted(m["by_purpose"].items()))
    )
    print(f"wall {f['wall']:.1f} s at {tokens_per_s:.0f} tokens/s per call, parallelism {parallelism}")
    if baseline:
        base = _baseline_wall(baseline, words, tokens_per_s, parallelism)
        print(f"baseline {baseline}: wall {base:.1f} s; this / baseline = {f['wall'] / base:.2f}")


VERDICTS = ("made consistent", "reported open", "unchecked", "UNREPORTED")


async def _memory_facts(db_url: str, facts: list[str], lies: list[str]) -> dict[str, Any]:
    with psycopg.connect(plain_url(db_url)) as conn:
        carried = eligible = 0
        for sentence in facts:
            row = conn.execute(
                "SELECT c.ordinal, c.completed_at FROM chunk_versions v JOIN chunks c ON c.id = v.chunk_id "
                "WHERE v.text LIKE %s ORDER BY v.id LIMIT 1",
                (f"%{sentence}%",),
            ).fetchone()
            if row is None:
                continue
            name = sentence.split(" ")[0] + " " + sentence.split(" ")[1]
            detail = next(v for n, _, v, *_ in FACTS if n.startswith(name)).split()[0]
            calls = conn.execute(
                "SELECT l.messages::text FROM llm_calls l JOIN chunks c ON c.id = l.chunk_id "
                "WHERE l.purpose IN ('write', 'extend') AND c.ordinal > %s AND l.started_at > %s",
                (row[0], row[1]),
            ).fetchall()
            eligible += len(calls)
            carried += sum(1 for (m,) in calls if name in m and detail in m)
        doc = conn.execute("SELECT text FROM documents WHERE role = 'output' ORDER BY version DESC LIMIT 1").fetchone()
        final = doc[0] if doc else ""
        fates = [_fate(conn, sentence, final) for sentence in lies]
        repaired = conn.execute("SELECT quote, subtype FROM continuity_findings WHERE status = 'repaired'").fetchall()
        false_repairs = sum(1 for q, sub in repaired if stands(q, final, exact=sub == "name_variant"))
        by_purpose = {
            p: (int(i or 0), int(o or 0))
            for p, i, o in conn.execute("SELECT purpose, sum(tokens_in), sum(tokens_out) FROM llm_calls GROUP BY 1")
        }
        return {
            "carried": carried,
            "eligible": eligible,
            "lies": fates,
            "repaired": len(repaired),
            "false_repairs": false_repairs,
            "findings": conn.execute("SELECT count(*) FROM continuity_findings").fetchone()[0],
            "states": dict(conn.execute("SELECT source, count(*) FROM coherence_states GROUP BY 1").fetchall()),
            "seams": dict(conn.execute("SELECT status, count(*) FROM seam_checks GROUP BY 1").fetchall()),
            "by_purpose": by_purpose,
            "tokens_in": sum(i for i, _ in by_purpose.values()),
            "tokens_out": sum(o for _, o in by_purpose.values()),
        }


def _fate(conn: psycopg.Connection[Any], sentence: str, final: str) -> dict[str, Any]:
    """What became of one planted contradiction: found? still in the document? said so?"""
    rows = conn.execute(
        "SELECT status, seam_check_id IS NOT NULL FROM continuity_findings WHERE quote LIKE %s",
        (f"%{sentence[:40]}%",),
    ).fetchall()
    where = "at a seam" if any(r[1] for r in rows) else "when accepted" if rows else ""
    there = sentence in final
    written = conn.execute("SELECT count(*) FROM chunk_versions WHERE text LIKE %s", (f"%{sentence}%",)).fetchone()[0]
    unchecked = conn.execute(
        "SELECT count(*) FROM chunk_versions v JOIN chunks c ON c.id = v.chunk_id "
        "JOIN coherence_states s ON s.id = c.state_after_id LEFT JOIN seam_checks k ON k.unit_id = c.unit_id "
        "AND k.edit_id IS NULL WHERE v.text LIKE %s AND (s.source = 'fallback' OR k.status = 'unchecked')",
        (f"%{sentence}%",),
    ).fetchone()[0]
    if not written:
        verdict = "not planted (the book has no such chapter)"
    elif not there:
        verdict = "made consistent"
    elif any(r[0] == "open" for r in rows):
        verdict = "reported open"
    elif unchecked:
        verdict = "unchecked"
    else:
        verdict = "UNREPORTED"
    return {
        "caught": bool(rows),
        "verdict": verdict,
        "where": where,
        "false_repair": there and any(r[0] == "repaired" for r in rows),
    }


def _baseline_wall(ref: str, words: int, tokens_per_s: float, parallelism: int) -> float:
    """The same job (without plants) on ``ref``'s code: a git worktree, its own benchmark."""
    with _worktree(ref) as (where, _):
        # The worktree's packages first on the path (the editable install is this checkout's).
        env = {**os.environ, "PYTHONPATH": str(where)}
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_book", "parallel", "--words", str(words), "--tokens-per-s",
             str(tokens_per_s), "--parallelism", str(parallelism)],
            cwd=where, env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    print(f"baseline run ({ref}): {_result_line(out)}")
    m = re.search(r"wall ([\d.]+) s", _result_line(out))
    assert m is not None, out
    return float(m.group(1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=60_000)
    ap.add_argument("--tokens-per-s", type=float, default=400.0)
    ap.add_argument("--parallelism", type=int, default=6)
    ap.add_argument("--judge", choices=["names", "weak"], default="names")
    ap.add_argument("--recheck", choices=["none", "lazy"], default="none")
    ap.add_argument("--repair", choices=["fix", "stubborn", "cosmetic"], default="fix")
    ap.add_argument("--baseline", help="a git ref to run the same job on, for the wall time beside it")
    a = ap.parse_args()
    asyncio.run(memory(a.words, a.tokens_per_s, a.parallelism, a.baseline, a.judge, a.recheck, a.repair))
