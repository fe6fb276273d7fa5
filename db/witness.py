"""The signer's side of C2SP tlog-witness: submit a checkpoint with a consistency proof from the
size a witness holds (``add-checkpoint``), read its answer, check its cosignature.

Each witness is a URL (its submission prefix) and its public key (a tlog-cosignature vkey, type
0x04). A witness answers one of three ways, and ``Answer.kind`` says which:

- ``cosigned``: its cosignature line, checked against its key;
- ``refused``: it holds a tree this one does not extend (409 on equal sizes, 422 a proof that
  does not hold, or a larger tree than this one): the log was rewritten or cut, an alarm;
- ``unavailable``: no answer, or one that says nothing about the log (a 5xx, an unknown origin or
  key, a cosignature that does not check): the checkpoint is not witnessed this time.

A witness that gave no answer is not asked again for ``backoff_s`` (a write holds its job's row
while it asks, and must not wait on a dead witness each time).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import structlog

from core import checkpoint
from core.checkpoint import VerifierKey

log = structlog.get_logger(__name__)
SIZE_TYPE = "text/x.tlog.size"


@dataclass
class Answer:
    kind: str  # cosigned | refused | unavailable
    witness: str  # the witness's key label
    line: str | None = None  # the cosignature line (cosigned)
    why: str | None = None  # refused, unavailable: what the witness said
    status: int | None = None
    size: int | None = None  # the size it holds, when it said


def request_body(old: int, proof: list[bytes], note: str) -> bytes:
    lines = [f"old {old}\n", *(base64.b64encode(h).decode() + "\n" for h in proof), "\n", note]
    return "".join(lines).encode()


@dataclass
class WitnessClient:
    url: str  # the submission prefix: POST <url>/add-checkpoint
    key: VerifierKey
    timeout_s: float = 5.0
    backoff_s: float = 10.0
    _down_until: float = 0.0
    _http: httpx.AsyncClient | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:  # a client belongs to its event loop
            self._http = httpx.AsyncClient(timeout=self.timeout_s, trust_env=False)
            self._loop = loop
        return self._http

    async def close(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None

    async def add_checkpoint(
        self, note: str, held: int, prove: Callable[[int], Awaitable[list[bytes]]], size: int
    ) -> Answer:
        """Submit ``note`` (of tree ``size``), proving it extends the ``held`` size this witness
        was last known to hold (``prove(old)``: the consistency proof from ``old``); on a 409 that
        names another size, once more from that one."""
        label = self.key.label
        if time.monotonic() < self._down_until:
            return Answer("unavailable", label, why="it did not answer a moment ago")
        old = held
        for _ in range(2):
            try:
                r = await self._client().post(
                    f"{self.url.rstrip('/')}/add-checkpoint", content=request_body(old, await prove(old), note)
                )
            except httpx.HTTPError as exc:
                self._down_until = time.monotonic() + self.backoff_s
                log.warning("witness.unreachable", witness=label, url=self.url, error=f"{type(exc).__name__}: {exc}")
                return Answer("unavailable", label, why=f"no answer ({type(exc).__name__})")
            if r.status_code == 409 and r.headers.get("content-type", "").startswith(SIZE_TYPE):
                try:
                    held_now = int(r.text.strip())
                except ValueError:
                    return Answer("unavailable", label, why="a 409 without a size", status=409)
                if held_now > size:
                    return Answer(
                        "refused", label, status=409, size=held_now,
                        why=f"it holds the log at {held_now} events, more than this tree of {size}: the log was cut",
                    )  # fmt: skip
                if held_now == old:
                    return Answer("unavailable", label, why=f"a 409 naming the size it was sent ({old})", status=409)
                old = held_now
                continue
            return self._answer(r, note, old, size)
        return Answer("unavailable", label, why="its held size kept changing")

    def _answer(self, r: httpx.Response, note: str, old: int, size: int) -> Answer:
        label = self.key.label
        said = r.text.strip()[:300]
        if r.status_code == 200:
            lines = [ln + "\n" for ln in r.text.split("\n") if ln.startswith(checkpoint.DASH)]
            try:
                cp = checkpoint.parse(checkpoint.with_cosignatures(note, lines))
                if label in checkpoint.cosigned_by(cp, [self.key]):
                    mine = next(ln for ln in lines if ln.startswith(f"{checkpoint.DASH} {self.key.name} "))
                    return Answer("cosigned", label, line=mine.rstrip("\n"), status=200, size=size)
            except (checkpoint.CheckpointError, StopIteration) as exc:
                return Answer("unavailable", label, why=f"its cosignature does not check: {exc}", status=200)
            return Answer("unavailable", label, why="no cosignature of its key in its answer", status=200)
        if r.status_code == 409:
            return Answer("refused", label, status=409, size=old, why=said or f"it cosigned another tree of {size}")
        if r.status_code == 422:
            why = said or f"this tree does not extend the tree of {old} it cosigned"
            return Answer("refused", label, status=422, size=old, why=why)
        if r.status_code >= 500:
            self._down_until = time.monotonic() + self.backoff_s
        return Answer("unavailable", label, why=f"HTTP {r.status_code}: {said}", status=r.status_code)


def parse_witnesses(urls: str | None, keys: str | None, timeout_s: float = 5.0) -> list[WitnessClient]:
    """``QUIRE_WITNESS_URL`` (comma-separated) paired in order with ``QUIRE_WITNESS_KEY`` (their
    vkeys, comma- or newline-separated). ValueError naming what does not match."""
    url_list = [u.strip() for u in (urls or "").split(",") if u.strip()]
    key_list = [k.strip() for k in (keys or "").replace("\n", ",").split(",") if k.strip()]
    if len(url_list) != len(key_list):
        raise ValueError(
            f"{len(url_list)} witness URLs but {len(key_list)} witness keys: each QUIRE_WITNESS_URL needs its "
            "key in QUIRE_WITNESS_KEY, in the same order (`quire witness key` prints one)"
        )
    out = []
    for url, text in zip(url_list, key_list, strict=True):
        key = VerifierKey.parse(text)
        if key.alg != checkpoint.COSIGNATURE_V1:
            raise ValueError(f"{key.label} is not a witness key (a tlog-cosignature key, type 0x04)")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a witness URL is http(s)://...: {url[:100]!r}")
        out.append(WitnessClient(url, key, timeout_s))
    return out
