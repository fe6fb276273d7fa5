"""Control characters and what Postgres cannot store, in text that came from outside (a model's
answer, an endpoint's error): kept whole where it is evidence, made harmless where it is shown.

- ``storable``: text Postgres can hold (``text`` and ``jsonb`` refuse NUL; UTF-8 cannot encode a
  lone surrogate). Each NUL becomes U+2400 (␀) and each lone surrogate U+FFFD, visibly; the exact
  original goes beside it as bytes (``raw_bytes``) wherever it must be kept losslessly.
- ``without_controls``: prose for the document: terminal escape sequences and every C0/C1
  control but tab and newline removed (a carriage return ends a line).
- ``escape_controls``: text for a terminal or a text file: every C0/C1 control but the ones the
  caller keeps written ``\\uXXXX``, so nothing a model or an endpoint wrote can move a cursor,
  ring a bell or retitle a window.
- ``sanitized``: a message from outside (an endpoint's error, the reason a job failed with) as
  Quire stores it: controls escaped as above (NUL included; newline and tab kept), lone
  surrogates U+FFFD, at most ``MAX_MESSAGE`` characters. The one function every such text goes
  through before a row holds it: Postgres then always can, and no reader gets a raw control.
"""

from __future__ import annotations

import re

NUL_SHOWN = "\u2400"  # SYMBOL FOR NULL
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# ESC/CSI sequences (colours, cursor moves, window titles) go whole: their parameters are junk too.
_ESCAPE_SEQUENCE = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1


def storable(text: str) -> str:
    """``text`` as Postgres can store it: NUL shown as ␀, a lone surrogate as U+FFFD."""
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(lambda m: NUL_SHOWN if m.group() == "\x00" else "\ufffd", text)


def is_storable(text: str) -> bool:
    return _UNSTORABLE.search(text) is None


def raw_bytes(text: str) -> bytes:
    """The exact text as UTF-8 bytes (a lone surrogate as its own three bytes): lossless."""
    return text.encode("utf-8", "surrogatepass")


def from_raw(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def without_controls(text: str) -> str:
    """Prose without terminal escapes or control characters (tab and newline stay; CR LF and a lone
    CR become newlines); lone surrogates become U+FFFD."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ESCAPE_SEQUENCE.sub("", text)
    return storable(_CONTROL.sub("", text))


def escape_controls(text: str, keep: str = "") -> str:
    """Every control character of ``text`` but those in ``keep`` written as ``\\uXXXX``."""
    return _ANY_CONTROL.sub(lambda m: m.group() if m.group() in keep else f"\\u{ord(m.group()):04x}", text)


MAX_MESSAGE = 4000  # characters of a message from outside that Quire stores (the rest is said to be cut)


def sanitized(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` (an error or reason from a model or a provider) as it is stored and shown."""
    out = storable(escape_controls(text, keep="\n\t"))
    if len(out) > limit:
        cut = len(out) - limit
        out = out[:limit] + f"… [{cut} more characters cut]"
    return out
