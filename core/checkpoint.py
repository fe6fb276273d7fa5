"""Signed checkpoints of a job's log: C2SP tlog-checkpoint notes, signed per C2SP signed-note with
Ed25519 (``cryptography``), and cosigned by witnesses per C2SP tlog-cosignature, so that a log can
be checked with the operator's public key (and a witness's) alone, by any signed-note tool.

A checkpoint is the note ``<origin>\\n<tree size>\\n<base64 root hash>\\n``, its extension lines,
a blank line, and one signature line ``— <key name> <base64(4-byte key id || signature)>`` per
signer. The origin names the job (``quire/jobs/<job id>``): a checkpoint of one job's log cannot
pass for another's. Quire's extension lines (signed with the rest):

- ``time <POSIX seconds>``: when it was signed;
- ``prev <tree size>``: the checkpoint signed before it (0: none), so a list of them has no holes;
- ``end <seq>``: the job had ended when it was signed, at its terminal event ``seq``;
- ``download``: signed for a download, which ends with it (a download cut shorter lacks it).

Keys use the signed-note text forms: ``PRIVATE+KEY+<name>+<id>+<base64(type || key)>`` (kept
outside the database) and ``<name>+<id>+<base64(type || public key)>`` (public), where the id is
the first four bytes of SHA-256(name || "\\n" || type || public key); type 0x01 signs checkpoints,
0x04 (a witness) cosigns them: ``cosignature/v1`` over the note's text with a timestamp.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

ED25519 = 0x01  # the signed-note algorithm byte of a log's Ed25519 key
COSIGNATURE_V1 = 0x04  # tlog-cosignature: an Ed25519 witness key
ORIGIN_PREFIX = "quire/jobs/"
_NAME = re.compile(r"[^\s+]+")
DASH = "\u2014"  # the signature lines' em dash
_SIG_LINE = re.compile(f"{DASH} ([^\\s+]+) ([A-Za-z0-9+/=]+)")
_EXTENSION = re.compile(r"(time|prev|end) (0|[1-9][0-9]{0,18})|download")
MAX_NOTE = 1 << 16  # bytes: a checkpoint is a few hundred; anything far larger is not one


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose signature does not hold (the message names why)."""


def _key_id(name: str, alg: int, public: bytes) -> int:
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4], "big")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str, what: str) -> bytes:
    try:
        return base64.b64decode(s, validate=True)
    except ValueError:
        raise CheckpointError(f"{what} is not base64") from None


@dataclass(frozen=True)
class VerifierKey:
    name: str
    key_id: int
    public: bytes
    alg: int = ED25519

    @property
    def id_hex(self) -> str:
        return f"{self.key_id:08x}"

    @property
    def label(self) -> str:
        return f"{self.name}+{self.id_hex}"

    def text(self) -> str:
        return f"{self.name}+{self.id_hex}+{_b64(bytes([self.alg]) + self.public)}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        parts = text.strip().split("+", 2)  # base64 may hold "+"
        if len(parts) != 3 or not _NAME.fullmatch(parts[0]):
            raise CheckpointError("a public key reads <name>+<key id>+<base64> (what `quire keys export` prints)")
        raw = _unb64(parts[2], "the public key")
        if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise CheckpointError("the public key is not an Ed25519 signed-note key (type 0x01) or witness key (0x04)")
        key = cls(parts[0], _key_id(parts[0], raw[0], raw[1:]), raw[1:], raw[0])
        if parts[1].lower() != key.id_hex:
            raise CheckpointError(f"the public key's id {parts[1]} does not match its key ({key.id_hex})")
        return key

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SignerKey:
    name: str
    seed: bytes  # the Ed25519 private key (32 bytes)
    alg: int = ED25519  # COSIGNATURE_V1: a witness's key

    @classmethod
    def generate(cls, name: str = "quire", alg: int = ED25519) -> SignerKey:
        if not _NAME.fullmatch(name):
            raise CheckpointError(f"a key name has no spaces or '+': {name!r}")
        raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(name, raw, alg)

    @property
    def verifier(self) -> VerifierKey:
        pub = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return VerifierKey(self.name, _key_id(self.name, self.alg, pub), pub, self.alg)

    def text(self) -> str:
        return f"PRIVATE+KEY+{self.name}+{self.verifier.id_hex}+{_b64(bytes([self.alg]) + self.seed)}"

    @classmethod
    def parse(cls, text: str) -> SignerKey:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _NAME.fullmatch(parts[2]):
            raise CheckpointError("a signing key reads PRIVATE+KEY+<name>+<key id>+<base64> (`quire keys make`)")
        raw = _unb64(parts[4], "the signing key")
        if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise CheckpointError("the signing key is not an Ed25519 signed-note key")
        key = cls(parts[2], raw[1:], raw[0])
        if parts[3].lower() != key.verifier.id_hex:
            raise CheckpointError("the signing key's id does not match its key")
        return key

    def _sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def sign(self, body: str) -> str:
        """``body`` (a checkpoint's text) signed: the note."""
        sig = self._sign(body.encode())
        return f"{body}\n{DASH} {self.name} {_b64(self.verifier.key_id.to_bytes(4, 'big') + sig)}\n"

    def cosign(self, body: str, timestamp: int) -> str:
        """A tlog-cosignature/v1 signature line on ``body`` (a witness's key), newline-terminated."""
        sig = self._sign(cosigned_message(body, timestamp))
        blob = self.verifier.key_id.to_bytes(4, "big") + timestamp.to_bytes(8, "big") + sig
        return f"{DASH} {self.name} {_b64(blob)}\n"


def cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def origin(job_id: object) -> str:
    return f"{ORIGIN_PREFIX}{job_id}"


def body(
    job_id: object,
    size: int,
    root: bytes,
    *,
    time: int | None = None,
    prev: int | None = None,
    end: int | None = None,
    download: bool = False,
) -> str:
    """A checkpoint's text, with the extension lines that are given."""
    ext = [f"time {time}"] if time is not None else []
    ext += [f"prev {prev}"] if prev is not None else []
    ext += [f"end {end}"] if end is not None else []
    ext += ["download"] if download else []
    return "".join(f"{line}\n" for line in (origin(job_id), str(size), _b64(root), *ext))


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint: what it states and who signed it (signatures not yet checked)."""

    origin: str
    size: int
    root: bytes
    body: str
    signatures: tuple[tuple[str, int, bytes], ...]  # (key name, key id, the signature's bytes after the id)
    extensions: tuple[str, ...] = ()

    @property
    def job_id(self) -> str | None:
        return self.origin[len(ORIGIN_PREFIX) :] if self.origin.startswith(ORIGIN_PREFIX) else None

    @property
    def key_ids(self) -> list[str]:
        return [f"{name}+{kid:08x}" for name, kid, _ in self.signatures]

    def _ext(self, name: str) -> int | None:
        for line in self.extensions:
            key, _, value = line.partition(" ")
            if key == name and value:
                return int(value)
        return None

    @property
    def time(self) -> int | None:
        return self._ext("time")

    @property
    def prev(self) -> int | None:
        return self._ext("prev")

    @property
    def end(self) -> int | None:
        return self._ext("end")

    @property
    def download(self) -> bool:
        return "download" in self.extensions


def parse(note: str) -> Checkpoint:
    """A checkpoint note read (CheckpointError if it is not one, in any way)."""
    if not isinstance(note, str):
        raise CheckpointError("a checkpoint note is text")
    if len(note) > MAX_NOTE or not note.endswith("\n") or "\n\n" not in note:
        raise CheckpointError("a checkpoint note is its text, a blank line and signature lines")
    text, _, sigs = note.rpartition("\n\n")
    text += "\n"
    lines = text.split("\n")[:-1]
    if len(lines) < 3 or not lines[0] or not lines[1].isascii() or not lines[1].isdigit():
        raise CheckpointError("a checkpoint's text is: origin, tree size, root hash (base64)")
    if lines[1] != "0" and lines[1].startswith("0") or len(lines[1]) > 19:
        raise CheckpointError("a checkpoint's tree size is a decimal with no leading zero")
    root = _unb64(lines[2], "the root hash")
    if len(root) != 32:
        raise CheckpointError("the root hash is not 32 bytes")
    extensions = tuple(lines[3:])
    for line in extensions:
        if not line:
            raise CheckpointError("a checkpoint's extension line is not empty")
        if line.split(" ", 1)[0] in ("time", "prev", "end", "download") and not _EXTENSION.fullmatch(line):
            raise CheckpointError(f"a malformed extension line: {line[:80]!r}")
    signatures = []
    for line in sigs.split("\n")[:-1]:
        m = _SIG_LINE.fullmatch(line)
        if m is None:
            raise CheckpointError(f"not a signature line: {line[:80]!r}")
        blob = _unb64(m.group(2), "a signature")
        if len(blob) < 5:
            raise CheckpointError("a signature line carries a 4-byte key id and a signature")
        signatures.append((m.group(1), int.from_bytes(blob[:4], "big"), blob[4:]))
    if not signatures:
        raise CheckpointError("the checkpoint carries no signature")
    return Checkpoint(lines[0], int(lines[1]), root, text, tuple(signatures), extensions)


def verify(note: str, keys: Sequence[VerifierKey]) -> Checkpoint:
    """The checkpoint, if one of ``keys`` (the operator's) signed it; CheckpointError naming what
    failed otherwise. Signatures of other keys (a witness's) are passed over, as signed-note says."""
    cp = parse(note)
    known = {(k.name, k.key_id): k for k in keys if k.alg == ED25519}
    for name, kid, sig in cp.signatures:
        key = known.get((name, kid))
        if key is not None:
            if len(sig) == 64 and key.verify(cp.body.encode(), sig):
                return cp
            raise CheckpointError(f"the signature of key {name}+{kid:08x} does not verify: the checkpoint was altered")
    given = ", ".join(k.label for k in keys if k.alg == ED25519) or "none"
    raise CheckpointError(
        f"signed by {', '.join(cp.key_ids)}, none of them a key you trust (given: {given}): "
        "re-signed by someone else's key"
    )


def cosigned_by(cp: Checkpoint, witnesses: Sequence[VerifierKey]) -> dict[str, int]:
    """The witnesses among ``witnesses`` whose cosignature on ``cp`` verifies: label -> timestamp.
    CheckpointError if a line bearing one of their key ids does not verify (an altered checkpoint)."""
    known = {(k.name, k.key_id): k for k in witnesses if k.alg == COSIGNATURE_V1}
    out: dict[str, int] = {}
    for name, kid, blob in cp.signatures:
        key = known.get((name, kid))
        if key is None:
            continue
        ts = int.from_bytes(blob[:8], "big")
        if len(blob) != 72 or ts >= 1 << 63 or not key.verify(cosigned_message(cp.body, ts), blob[8:]):
            raise CheckpointError(f"the cosignature of witness {key.label} does not verify: the checkpoint was altered")
        out[key.label] = ts
    return out


def with_cosignatures(note: str, lines: Iterable[str]) -> str:
    """The note with cosignature lines appended (each newline-terminated), none twice."""
    have = set(note.split("\n"))
    return note + "".join(line for line in lines if line.rstrip("\n") not in have)


def parse_keys(lines: Iterable[str]) -> list[VerifierKey]:
    """Public keys, one a line (blank lines and # comments skipped)."""
    return [VerifierKey.parse(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


# Events that end a step (an activity's end or error), change a job (created, succeeded, failed...),
# or record a user's, the API's or a webhook's action: a checkpoint follows each write that holds one.
STEP_END_KINDS = frozenset({"activity", "job", "user", "workflow", "webhook"})


def due(events: Sequence[dict[str, object]], unsigned: int, every: int) -> bool:
    """Whether a write of ``events``, leaving ``unsigned`` events after the last checkpoint, signs one."""
    return unsigned >= every or any(e["kind"] in STEP_END_KINDS and e["action"] != "start" for e in events)
