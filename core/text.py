"""The word rule and the text tools: paragraphs, parts, cleanup of model output, trimming, joins.

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
_ALNUM_NON_CJK = re.compile(rf"[^\W_{_CJK}]")


def count_words(text: str) -> int:
    """Count words by Quire's rule.

    A word is a whitespace-separated token that contains at least one letter or digit; each CJK
    ideograph counts as one word (a token of CJK ideographs and nothing else counts once per
    ideograph; a token mixing them with Latin letters counts its ideographs plus one for the
    rest). Never more than ``wc -w`` on non-CJK text, so a target met here is met there.
    """
    n = 0
    for token in text.split():
        cjk = len(_CJK_RE.findall(token))
        if cjk:
            n += cjk + (1 if _ALNUM_NON_CJK.search(token) else 0)
        elif _ALNUM_NON_CJK.search(token):
            n += 1
    return n


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


_SPECIAL_TOKEN = re.compile(r"<(?:start|end)_of_\w+>|<\|[^|>]{1,40}\|>|</?s>|<pad>|<unk>|<eos>|<bos>")
_HTML_HEADING = re.compile(r"<h[1-6][^>]*>.*?</h[1-6]>", re.I | re.S)
_HTML_TAG = re.compile(r"</?(?:p|br|div|span|b|i|em|strong|ul|ol|li|h[1-6])\b[^>]*>", re.I)
_LIST_JUNK = re.compile(r"(?:\b\d{1,2}\)\s*){3,}")
_REPEATED_TOKEN = re.compile(r"\b(\w+)(?:\W+\1\b){4,}", re.I)  # "word word word word word" -> "word"
_LONE_MARKERS = re.compile(r"^\s*(?:[-*#>]+|\d+[.)])\s*$", re.M)


def clean_model_text(text: str, echo_of: str = "") -> str:
    """Keep the prose a model wrote, without what small models add around it.

    Strips special tokens and list junk, markdown headings of level 1-2 (Quire writes the
    document's headings itself), and lines that echo the prompt back (``echo_of``).
    """
    text = _SPECIAL_TOKEN.sub("", text)
    text = _HTML_HEADING.sub("", text)
    text = _HTML_TAG.sub("", text)
    text = _LIST_JUNK.sub("", text)
    echoed = {normalize_paragraph(ln) for ln in echo_of.splitlines() if len(ln.split()) >= 3}
    kept = []
    seen: set[str] = set()
    for line in text.splitlines():
        if re.match(r"^\s*#{1,2}\s", line):
            continue
        key = normalize_paragraph(line)
        if echoed and len(line.split()) >= 3 and key in echoed:
            continue
        if key and key in seen:  # a line said again is a repetition loop, not prose
            continue
        seen.add(key)
        kept.append(line)
    text = "\n".join(kept)
    text = _LONE_MARKERS.sub("", text)
    text = _REPEATED_TOKEN.sub(r"\1", text)
    text = _unwrap(text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = text.strip()
    return "" if degenerate(text) else text


_BLOCK_START = re.compile(r"^\s*(?:[-*+>#|]|\d+[.)])")


def _unwrap(text: str) -> str:
    """Rejoin prose that a model hard-wrapped at ~80 columns; lists, quotes and headings stay."""
    out: list[str] = []
    for line in text.split("\n"):
        prev = out[-1] if out else ""
        if line.strip() and prev.strip() and not _BLOCK_START.match(line) and not _BLOCK_START.match(prev):
            out[-1] = prev.rstrip() + " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out)


def degenerate(text: str) -> bool:
    """Text that is mostly the same few words again: a model stuck in a loop."""
    toks = [t.lower() for t in text.split()]
    if len(toks) < 40:
        return False
    grams = [tuple(toks[i : i + 4]) for i in range(len(toks) - 3)]
    return len(set(grams)) / len(grams) < 0.5  # prose rarely repeats a 4-word run; loops do nothing else


def join_continuation(existing: str, addition: str) -> str:
    """Append a continuation: a new paragraph if the model started one, else the same line."""
    if not existing:
        return addition.strip()
    if not addition.strip():
        return existing
    if addition.startswith("\n") or existing.endswith("\n"):
        return existing.rstrip() + "\n\n" + addition.strip()
    return existing.rstrip() + " " + addition.strip()


def trim_to_words(text: str, max_words: int, min_words: int) -> str:
    """Cut ``text`` to at most ``max_words`` words, ending at a sentence end when one falls
    between ``min_words`` and ``max_words``; never below ``min_words`` if the text has them."""
    if count_words(text) <= max_words:
        return text
    # Walk the tokens keeping whitespace, remembering the last sentence end inside the window.
    best_cut = None
    n = 0
    cut_at_max = len(text)
    for m in re.finditer(r"\S+", text):
        tok = m.group(0)
        n += count_words(tok)
        if n > max_words:
            cut_at_max = m.start()
            break
        if n >= min_words and re.search(r"[.!?][\"')\]]*$", tok):
            best_cut = m.end()
    cut = best_cut if best_cut is not None else cut_at_max
    return text[:cut].rstrip()


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
