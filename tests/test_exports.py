"""Exports: a finished book (#, ##, ### and #### headings, hostile model text) served as md, txt,
html, docx and epub; DOCX and EPUB open with their own libraries and keep every heading in order;
HTML keeps model text as text; the word-count header stays the canonical text's."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
import uuid
from asyncio.subprocess import PIPE

import docx
import httpx
import pytest
from ebooklib import epub
from lxml import html as lxml_html

from core.layout import Block, assemble
from core.text import count_words, sha256
from db.models import Document, Job
from services import accounts
from testkit import make_job
from tests.fake_llm import XSS
from tests.helpers import auth

pytestmark = pytest.mark.usefixtures("worker")
HOSTILE = f"{XSS} & <b>bold?</b> [click](javascript:alert(2)) ![x](http://127.0.0.1:9/pixel.png)"


def book() -> str:
    """A book as the finalizer assembles one: parts (##) of chapters (###) of sections (####)."""
    blocks = []
    for p in range(2):
        blocks.append(Block(2, f"Part {p + 1}: Tides {XSS}", []))
        for c in range(2):
            blocks.append(Block(3, f"Chapter {p + 1}.{c + 1}", [f"Opening of chapter {c + 1}. {HOSTILE}"]))
            for s in range(2):
                text = f"Section text *{p}{c}{s}* with **weight** and words enough to read. {HOSTILE}"
                blocks.append(Block(4, f"Section {p + 1}.{c + 1}.{s + 1}", [text, "A second paragraph."]))
    return assemble(f"Atlas of Lanterns {XSS}", 1000, blocks)


def md_headings(text: str) -> list[tuple[int, str]]:
    return [(len(m.group(1)), m.group(2)) for m in re.finditer(r"^(#{1,6}) (.+)$", text, re.M)]


@pytest.fixture
async def finished(db, user: accounts.NewUser) -> tuple[uuid.UUID, str]:  # type: ignore[no-untyped-def]
    text = book()
    jid = await make_job(db, user.user_id)
    async with db.job_tx(jid) as tx:
        job = await tx.session.get(Job, jid)
        assert job is not None
        job.status = "running"  # the database allows queued -> running -> succeeded only
        await tx.session.flush()
        job.status, job.completed_at = "succeeded", job.created_at
        tx.session.add(
            Document(job_id=jid, role="output", text=text, sha256=sha256(text), word_count=count_words(text))
        )
    return jid, text


async def get(http: httpx.AsyncClient, user: accounts.NewUser, jid: uuid.UUID, fmt: str) -> httpx.Response:
    r = await http.get(f"/v1/jobs/{jid}/output?format={fmt}", headers=auth(user))
    assert r.status_code == 200, r.text
    return r


async def test_docx_and_epub_open_and_keep_every_heading_in_order(http, user, finished, tmp_path):
    jid, text = finished
    expected = md_headings(text)
    assert {level for level, _ in expected} == {1, 2, 3, 4} and len(expected) == 1 + 2 + 4 + 8
    r = await get(http, user, jid, "docx")
    assert r.headers["content-type"] == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert r.headers["content-disposition"] == f'attachment; filename="quire-{jid}.docx"'
    assert r.headers["x-quire-word-count"] == str(count_words(text)) and r.headers["x-quire-sha256"] == sha256(text)
    d = docx.Document(io.BytesIO(r.content))
    got = []
    for p in d.paragraphs:  # the title as Title, ## as Heading 1 ... #### as Heading 3
        if p.style.name == "Title":
            got.append((1, p.text))
        elif p.style.name.startswith("Heading "):
            got.append((int(p.style.name.split()[1]) + 1, p.text))
    assert got == expected
    assert d.core_properties.title == expected[0][1]
    contents = [p.text for p in d.paragraphs[: [p.style.name for p in d.paragraphs].index("Heading 1")]]
    assert contents[:2] == [expected[0][1], "Contents"] and contents[2 : 2 + 14] == [t for _, t in expected[1:]]
    assert any(XSS in p.text for p in d.paragraphs if p.style.name == "Normal")  # model text kept, as text

    r = await get(http, user, jid, "epub")
    assert r.headers["content-type"] == "application/epub+zip"
    path = tmp_path / "book.epub"
    path.write_bytes(r.content)
    b = epub.read_epub(str(path))
    assert b.get_metadata("DC", "title")[0][0] == expected[0][1]
    seen: list[tuple[int, str]] = []
    for item_id, _ in b.spine:
        item = b.get_item_with_id(item_id)
        if item.get_name() == "nav.xhtml":  # the contents page, after the title page
            nav = lxml_html.fromstring(item.get_content())
            assert [a.text_content() for a in nav.iter("a")] == [t for _, t in expected[1:]]
            continue
        tree = lxml_html.fromstring(item.get_content())
        for h in tree.iter("h1", "h2", "h3", "h4"):
            seen.append((int(h.tag[1]), h.text_content()))
        assert not list(tree.iter("script", "img")), item.get_name()  # markup in model text stays text
    assert seen == expected
    assert [b.get_item_with_id(i).get_name() for i, _ in b.spine][:2] == ["title.xhtml", "nav.xhtml"]


async def test_html_keeps_model_text_as_text(http, user, finished):
    jid, text = finished
    r = await get(http, user, jid, "html")
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-quire-word-count"] == str(count_words(text))
    page = r.text
    assert "<script" not in page and "<img" not in page and "<b>" not in page and 'href="javascript' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;bold?&lt;/b&gt;" in page
    assert "default-src 'none'" in page  # the file's own CSP: no script, no fetch, wherever it is opened
    tree = lxml_html.fromstring(page)
    body = [
        (int(h.tag[1]), h.text_content()) for h in tree.iter("h1", "h2", "h3", "h4") if h.text_content() != "Contents"
    ]
    assert body == md_headings(text) and tree.findtext(".//title") == md_headings(text)[0][1]
    assert [a.text_content() for a in tree.get_element_by_id("contents").iter("a")] == [
        t for _, t in md_headings(text)[1:]
    ]


async def test_md_txt_and_the_earlier_format_names(http, user, finished):
    jid, text = finished
    md = await get(http, user, jid, "md")
    assert md.text == text and md.headers["content-type"] == "text/markdown; charset=utf-8"
    assert (await get(http, user, jid, "markdown")).text == text
    txt = await get(http, user, jid, "txt")
    assert txt.headers["content-type"] == "text/plain; charset=utf-8"
    assert not re.search(r"^#", txt.text, re.M) and "**" not in txt.text and XSS in txt.text
    assert count_words(txt.text) <= count_words(text) and txt.headers["x-quire-word-count"] == str(count_words(text))
    assert (await get(http, user, jid, "text")).content == txt.content
    bad = await http.get(f"/v1/jobs/{jid}/output?format=pdf", headers=auth(user))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "format"]


async def test_quire_output_format(api_url, user, finished, tmp_path):
    jid, text = finished
    out = tmp_path / "book.docx"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIRE_", "DATABASE_URL"))}
    cmd = [sys.executable, "-m", "quire.cli", "output", str(jid), "--format", "docx", "-o", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--api", api_url, "--key", user.api_key, env=env, stdout=PIPE, stderr=PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert docx.Document(str(out)).paragraphs[0].text == md_headings(text)[0][1]
    assert f"{count_words(text)} words" in err.decode()
