"""The word rule and the text tools: paragraphs, parts, trimming, joins. (What a model wrote is
cleaned before it counts by ``core.gate``.)

The word rule (``count_words``) is the one definition of "a word" in Quire; the API, the
length checks, the finalizer and the benchmarks all call it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

# CJK ideographs (Unified + Extension A + Compatibility): each one counts as a word.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_CJK_RUN = re.compile(f"[{_CJK}]+")
_ALNUM_NON_CJK = re.compile(rf"[^\W_{_CJK}]")

# Where ``wc -w`` (GNU coreutils 9.1, UTF-8 locale) ends a word, found by running wc on every code
# point: ASCII whitespace, the Unicode spaces (Zs) and U+2060. It does not split at U+001C-U+001F,
# U+0085, U+2028 or U+2029 (not printable, so wc neither starts nor ends a word there), where
# Python's str.split() and \s do. Those are deleted and U+2060 made a space before counting, so
# that Python's whitespace is then exactly wc's.
WC_SEPARATORS = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u202f\u205f\u2060\u3000"
_NOT_WC_SPACE = re.compile("[\x1c-\x1f\x85\u2028\u2029]")
_WC_TOKEN = re.compile(f"[^{WC_SEPARATORS}]+")
# One match per token holding a non-CJK letter or digit: a separator, then anything that is
# neither (possessive: no backtracking), then the letter or digit.
_WORD_START = re.compile(rf"\s(?:[^\s\w]|[_{_CJK}])*+[^\W_{_CJK}]")


def count_words(text: str) -> int:
    """Count words by Quire's rule.

    A word is a token between ``wc -w``'s separators (``WC_SEPARATORS``) that contains at least
    one letter or digit; each CJK ideograph counts as one word (a token of CJK ideographs and
    nothing else counts once per ideograph; a token mixing them with other letters counts its
    ideographs plus one for the rest). Every letter or digit is a word character to wc, so on
    text without CJK ideographs this is never more than ``wc -w``, and equal to it when every
    token holds a letter or digit.
    """
    if _NOT_WC_SPACE.search(text):
        text = _NOT_WC_SPACE.sub("", text)
    cjk = 0
    if not text.isascii():
        text = text.replace("\u2060", " ")
        cjk = sum(map(len, _CJK_RUN.findall(text)))
    return cjk + len(_WORD_START.findall(" " + text))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def split_parts(text: str, part_words: int) -> list[str]:
    """Split at paragraph boundaries into parts of about ``part_words`` words.

    A paragraph longer than twice the part size is split at sentence ends so no part is huge.
    """
    pieces: list[str] = []
    for para in paragraphs(text):
        if count_words(para) > 2 * part_words:
            pieces.extend(_sentence_groups(para, part_words))
        else:
            pieces.append(para)
    parts: list[str] = []
    cur: list[str] = []
    cur_words = 0
    for p in pieces:
        w = count_words(p)
        if cur and cur_words + w > part_words * 1.25:
            parts.append("\n\n".join(cur))
            cur, cur_words = [], 0
        cur.append(p)
        cur_words += w
    if cur:
        parts.append("\n\n".join(cur))
    return parts


def _sentence_groups(para: str, part_words: int) -> Iterator[str]:
    sentences: list[str] = []
    for s in re.split(r"(?<=[.!?])\s+", para):
        toks = s.split()
        if len(toks) > 2 * part_words:  # no sentence ends to split at: split on words
            sentences.extend(" ".join(toks[i : i + part_words]) for i in range(0, len(toks), part_words))
        else:
            sentences.append(s)
    cur: list[str] = []
    n = 0
    for s in sentences:
        cur.append(s)
        n += count_words(s)
        if n >= part_words:
            yield " ".join(cur)
            cur, n = [], 0
    if cur:
        yield " ".join(cur)


def join_continuation(existing: str, addition: str) -> str:
    """Append a continuation: a new paragraph if the model started one, else the same line."""
    if not existing:
        return addition.strip()
    if not addition.strip():
        return existing
    if addition.startswith("\n") or existing.endswith("\n"):
        return existing.rstrip() + "\n\n" + addition.strip()
    return existing.rstrip() + " " + addition.strip()


_SENT_END = re.compile(r"[.!?。！？][\"'”’)\]」』）】]*$")
_CJK_SENT_END = "。！？"
_CLOSERS = "\"'”’)]」』）】"


def trim_to_words(text: str, max_words: int, min_words: int) -> str:
    """Cut ``text`` to at most ``max_words`` words, ending at a sentence end when one falls
    between ``min_words`` and ``max_words``; never below ``min_words`` if the text has them.

    A run of CJK ideographs is one token to the separators but many words, so it is walked
    ideograph by ideograph: cut after its last 。！？ inside the window, else at the exact
    ideograph that reaches ``max_words`` (never before the whole run).
    """
    if count_words(text) <= max_words:
        return text
    n, pos = _lines_below(text, min_words)
    best_cut = None
    cut_at_max = len(text)
    # Walk the tokens keeping whitespace, remembering the last sentence end inside the window.
    for m in _WC_TOKEN.finditer(text, pos):
        tok = m.group(0)
        if _CJK_RE.search(tok):
            n, sentence_cut, over = _walk_ideographs(tok, m.start(), n, min_words, max_words)
            best_cut = sentence_cut if sentence_cut is not None else best_cut
            if over is not None:
                cut_at_max = over
                break
        else:
            n += count_words(tok)
            if n > max_words:
                cut_at_max = m.start()
                break
        if n >= min_words and _SENT_END.search(tok):
            best_cut = m.end()
    if best_cut is None:
        return text[:cut_at_max].rstrip()
    while best_cut < len(text) and text[best_cut] in _CLOSERS:  # 。」 ends with its quote
        best_cut += 1
    return text[:best_cut].rstrip()


def _lines_below(text: str, min_words: int) -> tuple[int, int]:
    """Whole lines from the start whose words stay below ``min_words``: no cut can fall in them,
    so they are counted in one pass instead of walked token by token. (words, where they end)"""
    n = pos = 0
    while (end := text.find("\n", pos)) >= 0:
        words = count_words(text[pos:end])
        if n + words >= min_words:
            break
        n, pos = n + words, end + 1
    return n, pos


def _walk_ideographs(tok: str, start: int, n: int, lo: int, hi: int) -> tuple[int, int | None, int | None]:
    """Walk a token holding CJK ideographs from ``n`` words: (words after it, the offset just
    after its last 。！？ with lo <= words <= hi, the offset of the character that passes hi)."""
    ideographs, other, sentence_cut = 0, 0, None
    for i, ch in enumerate(tok):
        if _CJK_RE.match(ch):
            ideographs += 1
        elif not other and _ALNUM_NON_CJK.match(ch):
            other = 1  # the token's non-CJK letters count one word, once
        words = n + ideographs + other
        if words > hi:
            return words, sentence_cut, start + i
        if ch in _CJK_SENT_END and words >= lo:
            sentence_cut = start + i + 1
    return n + ideographs + other, sentence_cut, None


def tail_words(text: str, n: int) -> str:
    toks = text.split()
    return " ".join(toks[-n:]) if n > 0 else ""


def normalize_paragraph(p: str) -> str:
    return re.sub(r"\W+", " ", p.lower()).strip()


def dedupe_paragraphs(text: str) -> str:
    """Drop paragraphs a model repeated within one text (repetition loops)."""
    seen: set[str] = set()
    out = []
    for p in paragraphs(text):
        key = normalize_paragraph(p)
        if key and key in seen and count_words(p) >= 5:
            continue
        seen.add(key)
        out.append(p)
    return "\n\n".join(out)
