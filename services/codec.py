"""What Quire hands Temporal is encrypted: a payload codec (Temporal's documented way, as in
temporalio/samples-python ``encryption/``) encrypts every payload (workflow and activity inputs and
results, heartbeat details, memos) and, with the failure converter that encodes common attributes,
every failure's message and stack trace, with AES-256-GCM, before it leaves the process. Temporal's
database sees ciphertext only; the Web UI too, unless an operator signs in to the codec server
(``api/codec.py``), which decodes for them with these keys.

The keys are QUIRE_TEMPORAL_KEY (32 bytes, base64; several, comma-separated, while one is rotated:
the first encrypts, every one decrypts, each payload naming its key by a digest) when set, else
``QUIRE_HOME/temporal.key``, made on first use (0600) by the embedded stack or whichever process
needs it first on this machine. Every process that talks to the same Temporal (the API and every
worker) needs the same keys.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message
from sqlalchemy import update
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from db.models import CodecSession
from db.session import Database

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_FILE = "temporal.key"
NONCE_BYTES = 12


class CodecKeyError(ValueError):
    """The key is not 32 bytes of base64, or a payload was encrypted with another key."""


def parse_key(text: str) -> bytes:
    """A key from its base64 text (standard or URL-safe alphabet)."""
    raw = text.strip()
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_" if ("-" in raw or "_" in raw) else None)
    except (binascii.Error, ValueError):
        raise CodecKeyError("must be 32 bytes encoded in base64 (e.g. `openssl rand -base64 32`)") from None
    if len(key) != 32:
        raise CodecKeyError(f"must be 32 bytes encoded in base64, not {len(key)} bytes")
    return key


def parse_keys(text: str) -> list[bytes]:
    """Comma-separated keys (the first encrypts, all decrypt)."""
    keys = [parse_key(k) for k in text.split(",") if k.strip()]
    if not keys:
        raise CodecKeyError("must be 32 bytes encoded in base64 (e.g. `openssl rand -base64 32`)")
    return keys


def load_keys(secret: str | None, home: Path) -> list[bytes]:
    """The codec's keys: ``secret`` (QUIRE_TEMPORAL_KEY) if given, else the key file under ``home``
    (which may list several, comma-separated, like the setting), created with one new key if
    missing. Never logged; the file is private (0600) like all of QUIRE_HOME."""
    if secret:
        return parse_keys(secret)
    path = home / KEY_FILE
    if path.exists():
        return parse_keys(path.read_text())
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = AESGCM.generate_key(bit_length=256)
    # Written whole under another name, then linked into place: a process starting at the same
    # time either links first or reads the complete file the other linked.
    tmp = home / f".{KEY_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return parse_keys(path.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    return [key]


def key_id(key: bytes) -> str:
    """How a payload names its key: a digest, which reveals nothing of the key itself."""
    return hashlib.sha256(key).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each serialized payload with the first key; a fresh random nonce per
    payload. Decodes with whichever of the keys the payload names."""

    def __init__(self, keys: bytes | Sequence[bytes]) -> None:
        super().__init__()
        keys = [keys] if isinstance(keys, bytes) else list(keys)
        self.key_id = key_id(keys[0])
        self._aeads = {key_id(k): AESGCM(k) for k in keys}

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [
            Payload(
                metadata={"encoding": ENCODING, KEY_ID: self.key_id.encode()}, data=self._seal(p.SerializeToString())
            )
            for p in payloads
        ]

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if p.metadata.get("encoding", b"") != ENCODING:
                out.append(p)  # written before encryption was on (an older Quire): read as it is
                continue
            named = p.metadata.get(KEY_ID, b"").decode()
            aead = self._aeads.get(named)
            if aead is None:
                raise CodecKeyError(
                    f"a Temporal payload is encrypted with key {named!r}, this process has {sorted(self._aeads)}: "
                    "every process of the stack needs the same QUIRE_TEMPORAL_KEY (or QUIRE_HOME/temporal.key), "
                    "and a rotated-out key stays listed until nothing encrypted with it is left"
                )
            out.append(Payload.FromString(aead.decrypt(p.data[:NONCE_BYTES], p.data[NONCE_BYTES:], None)))
        return out

    def _seal(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aeads[self.key_id].encrypt(nonce, data, None)


def data_converter(keys: bytes | Sequence[bytes]) -> DataConverter:
    """The default converter, with payloads encrypted and failure messages moved into an
    (encrypted) payload instead of going to Temporal in clear."""
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def decode_all(codec: PayloadCodec, message: Message) -> None:
    """Decode, in place, every payload anywhere in a protobuf message (a whole workflow history,
    say): what the replay fixtures store, readable and independent of any key."""
    if isinstance(message, Payload):
        message.CopyFrom((await codec.decode([message]))[0])
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values()) if field.message_type.fields_by_name["value"].message_type else []
        else:
            items = list(value) if field.is_repeated else [value]
        for item in items:
            await decode_all(codec, item)


# --- the codec server's sessions (api/codec.py): kept in Postgres, so any API process can end one.


async def open_session(db: Database, seconds: int, ip: str | None) -> tuple[str, int]:
    """A new session of ``seconds``: (its id, when it expires, POSIX seconds)."""
    sid, now = secrets.token_hex(16), dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=seconds)
    async with db.tx() as s:
        s.add(CodecSession(id=sid, created_at=now, expires_at=expires, ip=ip))
    return sid, int(expires.timestamp())


async def session_live(db: Database, sid: str) -> bool:
    """Whether session ``sid`` exists, has not expired and was not revoked."""
    async with db.tx() as s:
        row = await s.get(CodecSession, sid)
    return row is not None and row.revoked_at is None and row.expires_at > dt.datetime.now(dt.UTC)


async def revoke_sessions(db: Database, sid: str | None = None) -> int:
    """End session ``sid`` (None: every open one) now; how many were ended."""
    now = dt.datetime.now(dt.UTC)
    q = update(CodecSession).where(CodecSession.revoked_at.is_(None), CodecSession.expires_at > now)
    async with db.tx() as s:
        done = await s.execute((q.where(CodecSession.id == sid) if sid else q).values(revoked_at=now))
    return int(done.rowcount or 0)  # type: ignore[attr-defined]
