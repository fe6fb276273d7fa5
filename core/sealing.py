"""Secrets Quire must use again later (webhook signing secrets) are stored sealed: encrypted and
authenticated with Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``) under a key kept
outside the database (QUIRE_SECRET_KEY, or a private key file in QUIRE_HOME). A copy of the
database alone reveals none of them. Several keys may be given: the first seals, any opens, so
the key can be rotated."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SealError(Exception):
    """A sealed value that no configured key opens (the key changed, or the value was altered)."""


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


class Sealer:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a Sealer needs at least one key")
        self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in keys])

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise SealError("a sealed secret could not be opened with the configured QUIRE_SECRET_KEY") from None
