"""Signed checkpoints of a job's log: C2SP tlog-checkpoint notes, signed per C2SP signed-note with
Ed25519 (``cryptography``), so that a log can be checked with the operator's public key alone and
any signed-note tool can read them.

A checkpoint is the note ``<origin>\\n<tree size>\\n<base64 root hash>\\n``, a blank line, and one
signature line ``— <key name> <base64(4-byte key id || signature)>`` per signer. The origin names
the job (``quire/jobs/<job id>``): a checkpoint of one job's log cannot pass for another's. Keys
use the signed-note text forms: ``PRIVATE+KEY+<name>+<id>+<base64>`` (the signer, kept outside
the database) and ``<name>+<id>+<base64>`` (the verifier key, public), where the id is the first
four bytes of SHA-256(name || "\\n" || 0x01 || public key).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01  # the signed-note algorithm byte
ORIGIN_PREFIX = "quire/jobs/"
_NAME = re.compile(r"[^\s+]+")
DASH = "\u2014"  # the signature lines' em dash


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose signature does not hold (the message names why)."""


def _key_id(name: str, public: bytes) -> int:
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public).digest()[:4], "big")


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

    @property
    def id_hex(self) -> str:
        return f"{self.key_id:08x}"

    def text(self) -> str:
        return f"{self.name}+{self.id_hex}+{_b64(bytes([ED25519]) + self.public)}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        parts = text.strip().split("+", 2)  # base64 may hold "+"
        if len(parts) != 3 or not _NAME.fullmatch(parts[0]):
            raise CheckpointError("a public key reads <name>+<key id>+<base64> (what `quire keys export` prints)")
        raw = _unb64(parts[2], "the public key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise CheckpointError("the public key is not an Ed25519 signed-note key")
        key = cls(parts[0], _key_id(parts[0], raw[1:]), raw[1:])
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

    @classmethod
    def generate(cls, name: str = "quire") -> SignerKey:
        if not _NAME.fullmatch(name):
            raise CheckpointError(f"a key name has no spaces or '+': {name!r}")
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(name, raw)

    @property
    def verifier(self) -> VerifierKey:
        pub = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return VerifierKey(self.name, _key_id(self.name, pub), pub)

    def text(self) -> str:
        return f"PRIVATE+KEY+{self.name}+{self.verifier.id_hex}+{_b64(bytes([ED25519]) + self.seed)}"

    @classmethod
    def parse(cls, text: str) -> SignerKey:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _NAME.fullmatch(parts[2]):
            raise CheckpointError("a signing key reads PRIVATE+KEY+<name>+<key id>+<base64> (`quire keys make`)")
        raw = _unb64(parts[4], "the signing key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise CheckpointError("the signing key is not an Ed25519 signed-note key")
        key = cls(parts[2], raw[1:])
        if parts[3].lower() != key.verifier.id_hex:
            raise CheckpointError("the signing key's id does not match its key")
        return key

    def sign(self, body: str) -> str:
        """``body`` (a checkpoint's text) signed: the note."""
        sig = Ed25519PrivateKey.from_private_bytes(self.seed).sign(body.encode())
        return f"{body}\n{DASH} {self.name} {_b64(self.verifier.key_id.to_bytes(4, 'big') + sig)}\n"


def origin(job_id: object) -> str:
    return f"{ORIGIN_PREFIX}{job_id}"


def body(job_id: object, size: int, root: bytes) -> str:
    return f"{origin(job_id)}\n{size}\n{_b64(root)}\n"


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint: what it states and who signed it (signatures not yet checked)."""

    origin: str
    size: int
    root: bytes
    body: str
    signatures: tuple[tuple[str, int, bytes], ...]  # (key name, key id, signature)

    @property
    def job_id(self) -> str | None:
        return self.origin[len(ORIGIN_PREFIX) :] if self.origin.startswith(ORIGIN_PREFIX) else None

    @property
    def key_ids(self) -> list[str]:
        return [f"{name}+{kid:08x}" for name, kid, _ in self.signatures]


def parse(note: str) -> Checkpoint:
    """A checkpoint note read (CheckpointError if it is not one)."""
    if not note.endswith("\n") or "\n\n" not in note:
        raise CheckpointError("a checkpoint note is its text, a blank line and signature lines")
    text, _, sigs = note.rpartition("\n\n")
    text += "\n"
    lines = text.split("\n")
    if len(lines) < 4 or not lines[1].isascii() or not lines[1].isdigit():
        raise CheckpointError("a checkpoint's text is: origin, tree size, root hash (base64)")
    root = _unb64(lines[2], "the root hash")
    if len(root) != 32:
        raise CheckpointError("the root hash is not 32 bytes")
    signatures = []
    for line in sigs.splitlines():
        m = re.fullmatch(f"{DASH} ([^\\s+]+) ([A-Za-z0-9+/=]+)", line)
        if m is None:
            raise CheckpointError(f"not a signature line: {line[:80]!r}")
        blob = _unb64(m.group(2), "a signature")
        if len(blob) != 68:
            raise CheckpointError("an Ed25519 signature line carries a 4-byte key id and 64 bytes")
        signatures.append((m.group(1), int.from_bytes(blob[:4], "big"), blob[4:]))
    return Checkpoint(lines[0], int(lines[1]), root, text, tuple(signatures))


def verify(note: str, keys: Sequence[VerifierKey]) -> Checkpoint:
    """The checkpoint, if one of ``keys`` signed it; CheckpointError naming what failed otherwise."""
    cp = parse(note)
    if not cp.signatures:
        raise CheckpointError("the checkpoint carries no signature")
    known = {(k.name, k.key_id): k for k in keys}
    for name, kid, sig in cp.signatures:
        key = known.get((name, kid))
        if key is not None:
            if key.verify(cp.body.encode(), sig):
                return cp
            raise CheckpointError(f"the signature of key {name}+{kid:08x} does not verify: the checkpoint was altered")
    given = ", ".join(f"{k.name}+{k.id_hex}" for k in keys) or "none"
    raise CheckpointError(
        f"signed by {', '.join(cp.key_ids)}, which is not a key you trust (given: {given}): "
        "re-signed by someone else's key"
    )


def parse_keys(lines: Iterable[str]) -> list[VerifierKey]:
    """Public keys, one a line (blank lines and # comments skipped)."""
    return [VerifierKey.parse(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


# Events that end a step (an activity's end or error), change a job (created, succeeded, failed...),
# or record a user's, the API's or a webhook's action: a checkpoint follows each write that holds one.
STEP_END_KINDS = frozenset({"activity", "job", "user", "workflow", "webhook"})


def due(events: Sequence[dict[str, object]], unsigned: int, every: int) -> bool:
    """Whether a write of ``events``, leaving ``unsigned`` events after the last checkpoint, signs one."""
    return unsigned >= every or any(e["kind"] in STEP_END_KINDS and e["action"] != "start" for e in events)
