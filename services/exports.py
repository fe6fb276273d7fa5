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
import io
import re
from dataclasses import dataclass, field
from typing import Any

import docx
from docx.enum.text import WD_BREAK
from docx.shared import Pt
from ebooklib import epub
from markdown_it import MarkdownIt
from markdown_it.token import Token

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
        return to_docx(doc)
    if fmt == "epub":
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


# The binary formats. DOCX: a title page, a contents page, the document with ``##`` as Heading 1,
# ``###`` as Heading 2, ...; EPUB 3: a title page, the contents as its navigation document and
# page, one file per top-level chapter, every heading linked from the contents.
# XML 1.0 cannot hold these: model text keeps its words, never a character the format rejects.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    return _NOT_XML.sub("", text)


def _body_headings(doc: Parsed) -> list[Heading]:
    return doc.headings[1:] if doc.title_is_heading else doc.headings


def _shift(doc: Parsed) -> int:
    """How many levels the body's headings move up: its top level becomes Heading 1."""
    body = _body_headings(doc)
    return min(h.level for h in body) - 1 if body else 0


# --- DOCX ---------------------------------------------------------------------------------------


def to_docx(doc: Parsed) -> bytes:
    d = docx.Document()
    d.core_properties.title = _xml(doc.title)
    d.core_properties.author = "Quire"
    d.add_paragraph(_xml(doc.title), style="Title")
    shift, body = _shift(doc), _body_headings(doc)
    if body:
        d.add_paragraph("Contents", style="Subtitle")
        for h in body:
            p = d.add_paragraph(_xml(h.text))
            p.paragraph_format.left_indent = Pt(18 * (h.level - shift - 1))
        d.add_paragraph().add_run().add_break(WD_BREAK.PAGE)
    tokens, skip_title = doc.tokens, doc.title_is_heading
    list_style: list[str] = []
    quote = 0
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.type == "heading_open":
            text = _xml(_words(tokens[i + 1]))
            if skip_title:  # on the title page already
                skip_title = False
            else:
                d.add_heading(text, level=min(9, max(1, int(t.tag[1]) - shift)))
            i += 3
            continue
        if t.type in ("bullet_list_open", "ordered_list_open"):
            list_style.append("List Bullet" if t.type == "bullet_list_open" else "List Number")
        elif t.type in ("bullet_list_close", "ordered_list_close"):
            list_style.pop()
        elif t.type == "blockquote_open":
            quote += 1
        elif t.type == "blockquote_close":
            quote -= 1
        elif t.type == "inline":
            style = list_style[-1] if list_style else ("Quote" if quote else None)
            _runs(d.add_paragraph(style=style), t)
        elif t.type in ("fence", "code_block"):
            run = d.add_paragraph().add_run(_xml(t.content.rstrip("\n")))
            run.font.name = "Courier New"
        elif t.type == "hr":
            d.add_paragraph("* * *")
        i += 1
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def _words(inline: Token) -> str:
    return "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))


def _runs(p: Any, inline: Token) -> None:
    """An inline token as runs: its emphasis, strong and code kept, links as their words."""
    bold = italic = False
    for c in inline.children or []:
        if c.type in ("strong_open", "strong_close"):
            bold = c.type == "strong_open"
        elif c.type in ("em_open", "em_close"):
            italic = c.type == "em_open"
        elif c.type in ("text", "code_inline", "html_inline"):
            run = p.add_run(_xml(c.content))
            run.bold, run.italic = bold or None, italic or None
            if c.type == "code_inline":
                run.font.name = "Courier New"
        elif c.type == "softbreak":
            p.add_run(" ")
        elif c.type == "hardbreak":
            p.add_run().add_break()


# --- EPUB ---------------------------------------------------------------------------------------


def to_epub(doc: Parsed, identifier: str) -> bytes:
    book = epub.EpubBook()
    book.set_identifier(f"urn:quire:{identifier}")
    book.set_title(_xml(doc.title))
    book.set_language("en")
    book.add_metadata("DC", "publisher", "Quire")
    body = _body_headings(doc)
    split = min((h.level for h in body), default=0)
    # Files: the title page (the title, and any text before the first chapter), then a chapter
    # from each top-level heading to the next.
    parts: list[tuple[str, list[Token]]] = [("title.xhtml", [])]
    where: dict[str, str] = {}  # heading anchor -> its file
    first = doc.title_is_heading
    for t in doc.tokens:
        if t.type == "heading_open" and int(t.tag[1]) == split and not first:
            parts.append((f"chapter-{len(parts):04d}.xhtml", []))
        if t.type == "heading_open":
            where[str(t.attrGet("id"))] = parts[-1][0]
            first = False
        parts[-1][1].append(t)
    items = []
    for name, toks in parts:
        content = body_html(toks)
        if name == "title.xhtml" and not doc.title_is_heading:
            content = f"<h1>{_escape(doc.title)}</h1>\n{content}"
        title = doc.title if name == "title.xhtml" else _first_heading(toks, doc.title)
        item = epub.EpubHtml(title=_xml(title), file_name=name, lang="en")
        item.content = f"<html><head><title>{_escape(title)}</title></head><body>{_xml(content)}</body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = _toc(body, where) or [epub.Link("title.xhtml", _xml(doc.title), "title")]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav(title="Contents"))
    book.spine = [items[0], "nav", *items[1:]]
    out = io.BytesIO()
    epub.write_epub(out, book)
    return out.getvalue()


def _escape(text: str) -> str:
    return _xml(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _first_heading(tokens: list[Token], default: str) -> str:
    for i, t in enumerate(tokens):
        if t.type == "heading_open":
            return _words(tokens[i + 1])
    return default


def _toc(headings: list[Heading], where: dict[str, str]) -> list[Any]:
    """The headings as ebooklib's nested contents: a heading with headings below it is a
    section (with its link) holding theirs."""
    out: list[Any] = []
    i = 0
    while i < len(headings):
        h = headings[i]
        j = i + 1
        while j < len(headings) and headings[j].level > h.level:
            j += 1
        href = f"{where.get(h.anchor, 'title.xhtml')}#{h.anchor}"
        if j > i + 1:
            out.append((epub.Section(_xml(h.text), href=href), _toc(headings[i + 1 : j], where)))
        else:
            out.append(epub.Link(href, _xml(h.text), h.anchor))
        i = j
    return out
