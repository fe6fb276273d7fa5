"""What Quire hands Temporal is encrypted: a payload codec (Temporal's documented way, as in
temporalio/samples-python ``encryption/``) encrypts every payload (workflow and activity inputs and
results, heartbeat details, memos) and, with the failure converter that encodes common attributes,
every failure's message and stack trace, with AES-256-GCM, before it leaves the process. Temporal's
database and Web UI see ciphertext only (the UI shows it as such: Quire runs no codec server).

The key is QUIRE_TEMPORAL_KEY (32 bytes, base64) when set, else ``QUIRE_HOME/temporal.key``, made
on first use (0600) by the embedded stack or whichever process needs it first on this machine. Every
process that talks to the same Temporal (the API and every worker) needs the same key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

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


def load_key(secret: str | None, home: Path) -> bytes:
    """The codec's key: ``secret`` (QUIRE_TEMPORAL_KEY) if given, else the key file under ``home``,
    created if missing. Never logged; the file is private (0600) like all of QUIRE_HOME."""
    if secret:
        return parse_key(secret)
    path = home / KEY_FILE
    if path.exists():
        return parse_key(path.read_text())
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
        key = parse_key(path.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    return key


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each serialized payload; a fresh random nonce per payload."""

    def __init__(self, key: bytes) -> None:
        super().__init__()
        # Names the key in each payload (a digest: it reveals nothing of the key itself).
        self.key_id = hashlib.sha256(key).hexdigest()[:16]
        self._aead = AESGCM(key)

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
            key_id = p.metadata.get(KEY_ID, b"").decode()
            if key_id != self.key_id:
                raise CodecKeyError(
                    f"a Temporal payload is encrypted with key {key_id!r}, this process has {self.key_id!r}: "
                    "every process of the stack needs the same QUIRE_TEMPORAL_KEY (or QUIRE_HOME/temporal.key)"
                )
            out.append(Payload.FromString(self._open(p.data)))
        return out

    def _seal(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, None)

    def _open(self, data: bytes) -> bytes:
        return self._aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)


def data_converter(key: bytes) -> DataConverter:
    """The default converter, with payloads encrypted and failure messages moved into an
    (encrypted) payload instead of going to Temporal in clear."""
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=EncryptionCodec(key),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
