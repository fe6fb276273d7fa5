"""The degeneration gate at the chunk step, and what a job's words are made of.

``core.gate`` judges an answer alone, in a process of the worker's own (``gate``): its rules are
pure CPU, milliseconds an answer, and on the event loop they held up every other call in flight
(a hundred streams, the heartbeats, Temporal's polls). Here its paragraphs and sentences are claimed in the
document (``text_marks``, in the transaction that stores the attempt), and whatever another chunk
of the job already said is cut (rule ``repeat``), in any chapter. Race-free without locks: the
table's primary key (job, fingerprint) lets one claim win, and a claim waits for a concurrent one
to commit or roll back; fingerprints are inserted in sorted order, so two attempts claiming the
same ones never wait on each other in a cycle. Idempotent: the claims commit or roll back with
their attempt, and a stored attempt is never redone. One index lookup per answer, whatever the
document's length.
"""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import text

from core.gate import Gated
from core.gate import gate as gate_here
from core.gate_process import gated
from core.repeats import drop_repeats, fingerprints
from db.manuscript import Chunk
from db.session import JobTx

log = structlog.get_logger()

GATE_TIMEOUT_S = 60.0  # an answer's verdict takes milliseconds: a process this slow is stuck


class _GateProcess:
    """``core.gate_process`` and the pipes to it: one verdict at a time, each request written and its
    answer read under one lock, in a task of its own, so a caller cancelled half-way never leaves
    a verdict behind for the next one to read."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lock = asyncio.Lock()

    async def ask(self, request: dict[str, Any]) -> Gated:
        return await asyncio.shield(asyncio.ensure_future(self._exchange(request)))

    async def _exchange(self, request: dict[str, Any]) -> Gated:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self.lock:
            self.proc.stdin.write(json.dumps(request, ensure_ascii=False).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), GATE_TIMEOUT_S)
        if not line:
            raise ConnectionError("the gate's process closed its output (it ended)")
        return gated(json.loads(line))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()  # reaped, its pipes closed, on this loop


_process: _GateProcess | None = None


async def start_gate_process() -> None:
    """Give the gate a process of its own (the worker does, at start)."""
    global _process
    if _process is None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "core.gate_process", stdin=PIPE, stdout=PIPE, limit=64 * 1024 * 1024
        )
        _process = _GateProcess(proc)


async def stop_gate_process() -> None:
    global _process
    if _process is not None:
        process, _process = _process, None
        await process.stop()


async def gate(answer: str, *, prompt: str = "", source: str = "", before: str = "", fragment: bool = False) -> Gated:
    """``core.gate.gate`` of an answer: in the gate's process when the worker started one, else
    here. A process that died, or hangs, is replaced for the next answer and this one is judged
    here: the rules are the same wherever they run."""
    request = {"answer": answer, "prompt": prompt, "source": source, "before": before, "fragment": fragment}
    process = _process
    if process is None:
        return gate_here(**request)
    try:
        return await process.ask(request)
    except (OSError, EOFError, TimeoutError, ValueError) as exc:
        log.warning("gate.process_lost", why=f"{type(exc).__name__}: {exc}", then="judged here; a new process started")
        if _process is process:  # the first caller to see it lost replaces it, not every one of them
            await stop_gate_process()
            await start_gate_process()
        return gate_here(**request)


async def clean(answer: str, echo_of: str = "", source: str = "", *, fragment: bool = False) -> str:
    """The kept text of ``gate`` (for steps that record no cuts of their own: bridges, seam repairs)."""
    return (await gate(answer, prompt=echo_of, source=source, fragment=fragment)).text


async def claim(tx: JobTx, chunk: Chunk, attempt_no: int, gated: Gated, free: Sequence[int] = ()) -> Gated:
    """``gated`` without the paragraphs and sentences the document already has; the rest claimed.
    ``free``: chunks whose marks are up for grabs (an edit's: the text it replaces), claimed over."""
    marks = sorted(fingerprints(gated.text), key=lambda m: m.fingerprint)
    if not marks:
        return gated
    # One statement of constant text however many marks (a VALUES list per count would be compiled
    # anew for each answer); its parameters are the marks, in the order they are inserted.
    params = {
        "job_id": chunk.job_id,
        "chunk_id": chunk.id,
        "attempt_no": attempt_no,
        "fingerprints": [m.fingerprint for m in marks],
        "kinds": [m.kind for m in marks],
        "words": [m.words for m in marks],
    }
    if free:
        won = set((await tx.session.execute(_RECLAIM, {**params, "free": list(free)})).scalars())
    else:
        won = set((await tx.session.execute(_CLAIM, params)).scalars())
    kept, cuts = drop_repeats(gated.text, {m.fingerprint for m in marks} - won)
    return Gated(kept, [*gated.cuts, *cuts], gated.words_in)


async def taken(tx: JobTx, gated: Gated, free: Sequence[int] = ()) -> Gated:
    """``gated`` without what the document already has, as ``claim`` would cut it, claiming
    nothing (an answer that may yet be refused)."""
    marks = fingerprints(gated.text)
    if not marks:
        return gated
    held = set(
        (
            await tx.session.execute(
                _TAKEN, {"job_id": tx.job_id, "fingerprints": [m.fingerprint for m in marks], "free": list(free)}
            )
        ).scalars()
    )
    kept, cuts = drop_repeats(gated.text, held)
    return Gated(kept, [*gated.cuts, *cuts], gated.words_in)


_INSERT_MARKS = (
    "INSERT INTO text_marks (job_id, fingerprint, kind, chunk_id, attempt_no, words) "
    "SELECT :job_id, m.f, m.k, :chunk_id, :attempt_no, m.w "
    "FROM unnest(CAST(:fingerprints AS bigint[]), CAST(:kinds AS text[]), CAST(:words AS int[])) "
    "WITH ORDINALITY AS m(f, k, w, n) ORDER BY m.n "
)
_CLAIM = text(_INSERT_MARKS + "ON CONFLICT DO NOTHING RETURNING fingerprint")
_RECLAIM = text(
    _INSERT_MARKS + "ON CONFLICT (job_id, fingerprint) DO UPDATE SET chunk_id = EXCLUDED.chunk_id, "
    "attempt_no = EXCLUDED.attempt_no WHERE text_marks.chunk_id = ANY(CAST(:free AS bigint[])) RETURNING fingerprint"
)
_TAKEN = text(
    "SELECT fingerprint FROM text_marks WHERE job_id = :job_id AND fingerprint = ANY(CAST(:fingerprints AS bigint[])) "
    "AND NOT chunk_id = ANY(CAST(:free AS bigint[]))"
)
