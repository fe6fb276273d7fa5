"""A witness of Quire's logs: C2SP tlog-witness over HTTP, tlog-cosignature/v1 with a key of its
own, and storage of its own (a SQLite file in a directory of its own, never the log's database).

For each log (origin ``quire/jobs/<id>``) it keeps the latest checkpoint it cosigned. It cosigns a
new one (``POST /add-checkpoint``) only once it has checked the operator's signature (403 if no
key it trusts signed it), that the client's old size is the size it holds (409 naming its size
otherwise), and an RFC 9162 consistency proof from that size to the new one (422 if it does not
hold; on equal sizes, equal roots, else 409), and it persists the new checkpoint, in the same
SQLite transaction as the check, before it answers: it never cosigns a tree that does not extend
its own. A refused request with a valid signature is kept (``refused``): evidence of a log that
forked.

The operator's public keys are read from a file (``audit.pub``), again whenever it changes (a
rotation needs no restart).
"""

from __future__ import annotations

import base64
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from core import checkpoint, merkle
from core.checkpoint import COSIGNATURE_V1, SignerKey, VerifierKey

KEY_FILE = "witness.key"
DB_FILE = "witness.db"
MAX_BODY = 64 * 1024
SIZE_TYPE = "text/x.tlog.size"
SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
                                 note TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refused (id INTEGER PRIMARY KEY, origin TEXT NOT NULL, old INTEGER NOT NULL,
                                    proof TEXT NOT NULL, note TEXT NOT NULL, status INTEGER NOT NULL,
                                    why TEXT NOT NULL, at REAL NOT NULL);
"""


def witness_key(directory: Path, name: str = "quire-witness") -> SignerKey:
    """The witness's cosigning key in ``directory`` (0600), made on first use."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    if not path.exists():
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(SignerKey.generate(name, COSIGNATURE_V1).text() + "\n")
        try:
            os.link(tmp, path)  # never over a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return SignerKey.parse(path.read_text())


class Refused(Exception):
    def __init__(self, status: int, why: str, *, size: int | None = None, keep: bool = False) -> None:
        super().__init__(why)
        self.status, self.why, self.size, self.keep = status, why, size, keep


@dataclass
class Submission:
    old: int
    proof: list[bytes]
    note: str


def parse_request(body: bytes) -> Submission:
    """An add-checkpoint body: ``old N``, up to 63 base64 proof lines, a blank line, the note."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "the request is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    lines = head.split("\n")
    if not sep or not lines[0].startswith("old "):
        raise Refused(400, "the request is an old size line, proof lines, a blank line and the checkpoint")
    size = lines[0][4:]
    if not size.isascii() or not size.isdigit() or (size != "0" and size.startswith("0")):
        raise Refused(400, "the old size is a decimal with no leading zero")
    if len(lines) - 1 > merkle.MAX_PROOF:
        raise Refused(400, f"more than {merkle.MAX_PROOF} proof lines")
    try:
        proof = [base64.b64decode(ln, validate=True) for ln in lines[1:]]
    except ValueError:
        raise Refused(400, "a proof line is not base64") from None
    if any(len(h) != 32 for h in proof):
        raise Refused(400, "a proof line is not a 32-byte hash")
    return Submission(int(size), proof, note)


@dataclass
class Witness:
    """The witness's state: its key, its SQLite file, the operator's public keys (a file)."""

    directory: Path
    log_keys: Path
    origin_prefix: str = checkpoint.ORIGIN_PREFIX
    name: str = "quire-witness"
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _keys: list[VerifierKey] = field(default_factory=list)
    _keys_mtime: float = -1.0

    def __post_init__(self) -> None:
        self.key = witness_key(self.directory, self.name)
        self.db = sqlite3.connect(self.directory / DB_FILE, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # persisted before it answers (tlog-witness)
        self.db.executescript(SCHEMA)

    def trusted(self) -> list[VerifierKey]:
        try:
            mtime = self.log_keys.stat().st_mtime
        except OSError:
            return []
        if mtime != self._keys_mtime:
            self._keys = checkpoint.parse_keys(self.log_keys.read_text().splitlines())
            self._keys_mtime = mtime
        return self._keys

    def held(self, origin: str) -> tuple[int, bytes] | None:
        row = self.db.execute("SELECT size, root FROM logs WHERE origin = ?", (origin,)).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def add_checkpoint(self, body: bytes) -> str:
        """The cosignature line for an add-checkpoint request body; Refused naming why not."""
        req = parse_request(body)
        try:
            cp = checkpoint.parse(req.note)
        except checkpoint.CheckpointError as exc:
            raise Refused(400, f"not a checkpoint: {exc}") from None
        if not cp.origin.startswith(self.origin_prefix):
            raise Refused(404, f"unknown log {cp.origin[:200]!r}")
        try:
            checkpoint.verify(req.note, self.trusted())
        except checkpoint.CheckpointError as exc:
            raise Refused(403, f"no key this witness trusts signed it: {exc}") from None
        if req.old > cp.size:
            raise Refused(400, f"old size {req.old} is larger than the checkpoint's {cp.size}")
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self._check(req, cp)
                self.db.execute(
                    "INSERT INTO logs (origin, size, root, note, updated) VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) "
                    "DO UPDATE SET size = excluded.size, root = excluded.root, note = excluded.note, "
                    "updated = excluded.updated",
                    (cp.origin, cp.size, cp.root, req.note, self.clock()),
                )
                self.db.execute("COMMIT")
            except Refused as exc:
                self.db.execute("ROLLBACK")
                if exc.keep:
                    self._keep(req, cp, exc)
                raise
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return self.key.cosign(cp.body, int(self.clock()))

    def _check(self, req: Submission, cp: checkpoint.Checkpoint) -> None:
        have = self.held(cp.origin)
        size, root = have if have is not None else (0, merkle.EMPTY_ROOT)
        if req.old != size:
            raise Refused(409, f"it holds the log at {size}", size=size)
        if req.old == cp.size and root != cp.root:
            raise Refused(409, f"it cosigned another root at {size}: the log forked", keep=True)
        try:
            merkle.verify_consistency(size, root, cp.size, cp.root, req.proof)
        except merkle.ProofError as exc:
            why = f"the tree of {cp.size} does not extend the tree of {size} it cosigned: {exc}"
            raise Refused(422, why, keep=True) from None

    def _keep(self, req: Submission, cp: checkpoint.Checkpoint, exc: Refused) -> None:
        proof = "".join(base64.b64encode(h).decode() + "\n" for h in req.proof)
        self.db.execute(
            "INSERT INTO refused (origin, old, proof, note, status, why, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cp.origin, req.old, proof, req.note, exc.status, exc.why, self.clock()),
        )

    def close(self) -> None:
        self.db.close()


def app(witness: Witness) -> Starlette:
    """The witness's HTTP interface: ``POST /add-checkpoint`` (tlog-witness) and ``GET /healthz``."""

    async def add_checkpoint(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("the request is too large\n", status_code=413)
        try:
            line = witness.add_checkpoint(body)
        except Refused as exc:
            if exc.size is not None:
                return Response(f"{exc.size}\n", status_code=exc.status, headers={"Content-Type": SIZE_TYPE})
            return PlainTextResponse(exc.why + "\n", status_code=exc.status)
        return PlainTextResponse(line)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse(witness.key.verifier.text() + "\n")

    return Starlette(routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"]), Route("/healthz", healthz)])
