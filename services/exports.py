"""A finished document in the format a reader wants: Markdown (the canonical text itself), plain
text, HTML, DOCX or EPUB, each with the title, a contents page and every heading at its level.

One parse for all of them: markdown-it-py (CommonMark) with raw HTML off, so whatever the model
wrote is text, never markup: ``<script>`` in a chunk arrives as ``&lt;script&gt;`` in HTML and
EPUB, and as the same characters in DOCX and TXT. Images are off too (a model-written
``![](https://...)`` would make readers fetch from anywhere), and the HTML file carries its own
Content-Security-Policy that allows no script and no fetch. python-docx builds DOCX, ebooklib EPUB.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.token import Token

Format = Literal["md", "txt", "html", "docx", "epub"]
FORMATS: tuple[str, ...] = ("md", "txt", "html", "docx", "epub")
# The route's earlier names for two of them.
ALIASES = {"markdown": "md", "text": "txt"}
MEDIA_TYPES = {
    "md": "text/markdown; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "epub": "application/epub+zip",
}
HTML_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
STYLE = "body{max-width:42em;margin:2em auto;padding:0 1em;font:1.05em/1.6 Georgia,serif}nav li{list-style:none}"


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "typographer": False})
    md.disable("image")
    return md


@dataclass
class Heading:
    level: int
    text: str
    anchor: str


@dataclass
class Parsed:
    title: str
    tokens: list[Token]
    headings: list[Heading] = field(default_factory=list)
    title_is_heading: bool = False  # the document opens with its `#` title


def parse(text: str, fallback_title: str) -> Parsed:
    """The document's tokens, its headings (each given an id) and its title (its opening ``#``
    heading, else ``fallback_title``)."""
    md = _parser()
    tokens = md.parse(text)
    out = Parsed(fallback_title, tokens)
    used: set[str] = set()
    for i, t in enumerate(tokens):
        if t.type == "heading_open":
            words = _plain(tokens[i + 1])
            anchor = _anchor(words, used)
            t.attrSet("id", anchor)
            out.headings.append(Heading(int(t.tag[1]), words, anchor))
    first = next((t for t in tokens if t.type != "hr"), None)
    if out.headings and first is not None and first.type == "heading_open" and first.tag == "h1":
        out.title, out.title_is_heading = out.headings[0].text, True
    return out


def _plain(inline: Token) -> str:
    """The text of an inline token, markup gone (emphasis, links: their words only)."""
    parts: list[str] = []
    for c in inline.children or []:
        if c.type in ("text", "code_inline", "html_inline"):
            parts.append(c.content)
        elif c.type in ("softbreak", "hardbreak"):
            parts.append("\n" if c.type == "hardbreak" else " ")
    return "".join(parts)


def _anchor(words: str, used: set[str]) -> str:
    base = re.sub(r"[^\w]+", "-", words.lower(), flags=re.UNICODE).strip("-")[:60] or "section"
    anchor, n = base, 1
    while anchor in used:
        n += 1
        anchor = f"{base}-{n}"
    used.add(anchor)
    return anchor


def render(text: str, fmt: str, fallback_title: str, identifier: str = "quire") -> bytes:
    """The document ``text`` (the canonical Markdown) as ``fmt``; ``identifier`` names an EPUB."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt == "md":
        return text.encode("utf-8")
    doc = parse(text, fallback_title)
    if fmt == "txt":
        return to_text(doc).encode("utf-8")
    if fmt == "html":
        return to_html(doc).encode("utf-8")
    if fmt == "docx":
        from services.export_files import to_docx

        return to_docx(doc)
    if fmt == "epub":
        from services.export_files import to_epub

        return to_epub(doc, identifier)
    raise ValueError(f"unknown format {fmt!r}")


def to_text(doc: Parsed) -> str:
    """Plain text: headings and paragraphs as lines of words, a blank line between blocks."""
    blocks: list[str] = []
    prefix: list[str] = []
    for t in doc.tokens:
        if t.type == "inline":
            blocks.append("".join(prefix) + _plain(t).replace("\n", " "))
        elif t.type in ("fence", "code_block"):
            blocks.append(t.content.rstrip("\n"))
        elif t.type == "hr":
            blocks.append("* * *")
        elif t.type == "list_item_open":
            prefix = [f"{t.info}{t.markup} " if t.info else "- "]  # info: an ordered item's number
        elif t.type == "list_item_close":
            prefix = []
    return "\n\n".join(b for b in blocks if b.strip()) + "\n"


def contents_html(doc: Parsed) -> str:
    """The contents as nested lists of links (every heading below the title)."""
    items = doc.headings[1:] if doc.title_is_heading else doc.headings
    return _nested(items) if items else ""


def _nested(headings: list[Heading]) -> str:
    out, i = ["<ul>"], 0
    while i < len(headings):
        h, j = headings[i], i + 1
        while j < len(headings) and headings[j].level > h.level:
            j += 1
        below = _nested(headings[i + 1 : j]) if j > i + 1 else ""
        out.append(f'<li><a href="#{html.escape(h.anchor)}">{html.escape(h.text)}</a>{below}</li>')
        i = j
    return "".join(out) + "</ul>"


def body_html(tokens: list[Token]) -> str:
    return _parser().renderer.render(tokens, _parser().options, {})


def to_html(doc: Parsed) -> str:
    """One HTML file: its title, a contents list and the body, escaped wherever it holds text."""
    contents = contents_html(doc)
    nav = f'<nav id="contents"><h2>Contents</h2>{contents}</nav>\n' if contents else ""
    heading = "" if doc.title_is_heading else f"<h1>{html.escape(doc.title)}</h1>\n"
    body = body_html(doc.tokens)
    if doc.title_is_heading:  # the contents go after the title, before the first chapter
        cut = body.index("</h1>") + len("</h1>\n")
        body = body[:cut] + nav + body[cut:]
    else:
        body = heading + nav + body
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{HTML_CSP}">\n'
        '<meta name="generator" content="Quire">\n'
        f"<title>{html.escape(doc.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body}</body>\n</html>\n"
    )
