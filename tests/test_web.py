"""The web pages in a real browser: Debian's Chromium, headless, driven by Playwright.

Set QUIRE_UPDATE_SCREENSHOTS=1 to refresh docs/*.png from this run.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx
import pytest

from core.logfile import parse_log
from tests.web_kit import csp_errors, read_download, shot, sign_in, until

pytestmark = pytest.mark.usefixtures("worker")


async def test_submit_watch_live_scroll_copy_download_reload_history(browser, api_url, fake, user, tmp_path):
    fake.reset(delay_s=0.04)
    ctx = await browser.new_context(
        viewport={"width": 1366, "height": 768},
        accept_downloads=True,
        permissions=["clipboard-read", "clipboard-write"],
    )
    page = await ctx.new_page()
    violations = csp_errors(page)
    await sign_in(page, api_url, user.api_key)
    await page.get_by_label("Brief").fill("The quiet engineering of canal locks")
    await page.get_by_label("Target words").fill("2500")
    await page.get_by_role("button", name="Start job").click()
    await page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    # Events stream in live while the job runs.
    await until(page, "window.quireAudit && window.quireAudit.seqs.length >= 80")
    status = await page.locator("#status").text_content()
    assert status in ("queued", "running")
    await shot(page, "job-running.png", tmp_path)

    # Raw, one line per event: scrolling up pauses auto-follow; new events keep arriving and are counted.
    await page.get_by_role("button", name="Raw").click()
    await page.locator("#lines").evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
    await until(page, "!window.quireAudit.following")
    await until(page, "document.querySelector('#newbar').classList.contains('show')")
    first = await page.locator("#newcount").text_content()
    await until(page, f"document.querySelector('#newcount').textContent !== {json.dumps(first)}")
    assert await page.locator("#lines").evaluate("el => el.scrollTop") == 0  # still where the user left it
    await page.get_by_role("button", name="Jump to live").click()
    await until(page, "window.quireAudit.following")

    # Copy all puts one line per event on the clipboard.
    await page.get_by_role("button", name="Copy all").click()
    copied = await page.evaluate("navigator.clipboard.readText()")
    seqs_then = await page.evaluate("window.quireAudit.seqs")
    copied_seqs = [int(line.split()[0]) for line in copied.splitlines()]
    assert copied_seqs == seqs_then[: len(copied_seqs)] and len(copied_seqs) >= 30

    # A reload mid-job resumes the log with no gap and no duplicate.
    await page.reload()
    await until(page, "document.querySelector('#live').textContent === 'complete'", 90)
    seqs = await page.evaluate("window.quireAudit.seqs")
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {user.api_key}"}) as http:
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        api_json = (await http.get(f"/v1/jobs/{job_id}/audit?format=json")).json()["events"]
        api_txt = parse_log((await http.get(f"/v1/jobs/{job_id}/audit?format=txt")).text).events
    assert job["status"] == "succeeded"
    # The panel shows the whole log as it stood when the job settled; what users did after that
    # (this page's read of the output, say) is in the log too, for the next reader.
    assert seqs == list(range(1, len(seqs) + 1)) and [e["seq"] for e in api_json[: len(seqs)]] == seqs
    assert {e["kind"] for e in api_json[len(seqs) :]} <= {"user"}
    views = [e for e in api_json if e["kind"] == "user" and e["action"] == "view"]
    assert len(views) == 2 and views[0]["seq"] in seqs  # each opening of the page, before its log is read
    assert views[0]["data"]["user"] == user.name and "Chrome" in views[0]["data"]["user_agent"]
    await page.locator("#status", has_text="succeeded").wait_for()
    await page.locator("#doc h3", has_text=job["title"]).wait_for()

    # Downloads of both formats match the API, and each holds its own record as its last event.
    async with page.expect_download() as dl:
        await page.get_by_role("button", name="JSON").click()
    got = json.loads(await read_download(dl))["events"]
    assert got[: len(api_json)] == api_json and {e["kind"] for e in got[len(api_json) :]} == {"user"}
    assert (got[-1]["action"], got[-1]["data"]["format"]) == ("download_audit", "json")
    async with page.expect_download() as dl:
        await page.get_by_role("button", name="TXT").click()
    txt = await read_download(dl)
    from_txt = parse_log(txt).events  # (its signed checkpoints come after the events)
    assert from_txt[: len(api_txt)] == api_txt and from_txt[: len(got)] == got
    assert (from_txt[-1]["action"], from_txt[-1]["data"]["format"]) == ("download_audit", "txt")

    # Filters: kind and text.
    await page.get_by_label("Filter by kind").select_option("llm")
    visible = await page.locator("#lines .line:not([hidden])").evaluate_all("els => els.map(e => e.dataset.kind)")
    assert visible and set(visible) == {"llm"}
    await page.get_by_label("Filter by kind").select_option("")
    await shot(page, "job-finished.png", tmp_path)

    # The panel stays open after the job ends until dismissed, and reopens.
    assert await page.locator("#audit").is_visible()
    await page.get_by_role("button", name="Close the audit log").click()
    assert not await page.locator("#audit").is_visible()
    await page.get_by_role("button", name="Audit log").click()
    assert await page.locator("#audit").is_visible()

    # Job history lists the job with its counts and links.
    await page.goto(api_url + "/history")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    await row.wait_for()
    text = await row.text_content()
    # The log's length now: the page's reads and downloads are in it too.
    assert "succeeded" in text and "2,500" in text and "✓ yes" in text and f"{from_txt[-1]['seq']:,}" in text
    await shot(page, "history.png", tmp_path)
    assert violations == []  # every page did all of the above under its strict CSP
    await ctx.close()


async def test_pages_need_a_key_and_reject_a_bad_one(browser, api_url):
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await page.goto(api_url + "/history")
    await page.wait_for_url("**/?next=*")
    await page.get_by_label("API key").fill("qk_wrong")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("That key was not accepted.").wait_for()
    await ctx.close()


async def test_sign_in_goes_only_to_this_sites_pages_and_sign_out_shows_only_when_signed_in(browser, api_url, user):
    """Issue 20, finding 7: ``/?next=//evil.example`` sent a signed-in user off-site; issue 27: so did
    ``/.//evil.example``, ``/..//`` and ``/%2e//``, which the URL parser normalises to ``//evil.example``."""
    ctx = await browser.new_context()
    page = await ctx.new_page()
    bad_nexts = ("//evil.example/x", "/\\evil.example/x", "https://evil.example/", "/.//evil.example/x",
                 "/..//evil.example/x", "/%2e//evil.example/x", "/./\\evil.example/x")  # fmt: skip
    for bad in bad_nexts:
        await page.goto(api_url + "/?next=" + quote(bad, safe=""))
        assert await page.locator("#signout").is_hidden()  # nobody is signed in yet
        await page.get_by_label("API key").fill(user.api_key)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("heading", name="New job").wait_for()
        assert page.url.startswith(api_url + "/"), page.url
        assert await page.locator("#signout").is_visible()
        await page.evaluate("sessionStorage.clear()")
    await page.goto(api_url + "/?next=" + quote("/history", safe=""))
    await page.get_by_label("API key").fill(user.api_key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(api_url + "/history")  # a path of this site is still where sign-in goes
    icon = await page.locator("link[rel=icon]").get_attribute("href")
    assert icon and (await page.request.get(api_url + icon)).status == 200
    assert (await page.request.get(api_url + "/favicon.ico")).status == 200
    await ctx.close()


async def test_model_markup_is_shown_as_text_and_never_runs(browser, api_url, fake, user):
    """A hostile endpoint puts markup in every field it controls (prose, every plan string,
    finish_reason, model, id). The pages show it as text. The CSP is bypassed in this browser so
    that only the pages' own text-only DOM stands between the markup and the user: no dialog."""
    from tests.fake_llm import XSS
    from tests.helpers import auth, follow_to_end

    fake.reset(mode="html")
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        r = await http.post(
            "/v1/jobs", json={"kind": "generate", "prompt": "Beacons", "target_words": 300}, headers=auth(user)
        )
        job_id = r.json()["id"]
        _, end = await follow_to_end(http, job_id, user)
    assert end["status"] == "succeeded"
    ctx = await browser.new_context(bypass_csp=True)
    page = await ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
    await sign_in(page, api_url, user.api_key)
    await page.goto(f"{api_url}/jobs/{job_id}")
    await until(page, "document.querySelector('#live').textContent === 'complete'")
    await until(page, "document.querySelectorAll('#doc .chunk').length > 0")
    # Open every collapsed line (prompt, response, finish reason, tokens) so all of it is rendered.
    await page.evaluate("document.querySelectorAll('#lines details').forEach(d => { d.open = true; })")
    title = await page.locator("#title").text_content()
    doc = await page.locator("#doc").text_content()
    panel = await page.locator("#lines").text_content()
    heading = await page.locator("#doc h3").text_content()
    # The prose's markup is cut by the degeneration gate (the document never counts it); the plan's
    # strings (the title, the headings) and the raw answers in the panel still carry it.
    assert title.startswith(XSS) and heading.startswith(XSS) and doc.count(XSS) >= 2
    assert f"finish stop{XSS}" in panel and f"response: {XSS}" in panel
    await page.goto(f"{api_url}/history")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    await row.wait_for()
    assert XSS in await row.text_content()
    for path in (f"/jobs/{job_id}", "/history"):
        await page.goto(api_url + path)
        await until(page, "document.querySelectorAll('#lines .line, #rows tr').length > 0")
        assert (
            await page.evaluate("document.querySelectorAll('main img, aside img, main script, aside script').length")
            == 0
        )
    assert dialogs == []
    await ctx.close()

    # And with the CSP on, a string can't even become HTML on these pages (Trusted Types).
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await page.goto(api_url + "/")
    refused = await page.evaluate(
        "() => { try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); return false; }"
        " catch (e) { return e instanceof TypeError; } }"
    )
    assert refused is True
    await ctx.close()


async def test_docs_work_offline_under_their_csp(browser, api_url):
    async with httpx.AsyncClient(base_url=api_url) as http:
        ops = sum(len(v) for v in (await http.get("/openapi.json")).json()["paths"].values())
    ctx = await browser.new_context()
    page = await ctx.new_page()
    violations = csp_errors(page)
    external: list[str] = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(api_url) else None)
    await page.goto(api_url + "/docs")
    await page.locator(".opblock").first.wait_for()
    assert await page.locator(".opblock").count() == ops
    assert await page.locator(".info .title").text_content() == "Quire 0.1.0 OAS 3.1"
    assert violations == [] and external == []
    await ctx.close()


async def test_document_grows_and_the_panel_tells_the_story(browser, api_url, fake, user, tmp_path):
    """Two chapters written in parallel: the page shows the document growing chunk by chunk, read
    incrementally, and the panel groups the interleaved log under the steps that wrote it."""
    from core.text import count_words
    from tests.helpers import auth

    fake.reset(ratio=(1.0, 1.05), delay_s=0.1)  # a chunk a call; the delay keeps the job in flight a while
    async with httpx.AsyncClient(base_url=api_url, headers=auth(user), timeout=30) as http:
        spec = {"kind": "generate", "prompt": "Tidal mills", "target_words": 10_500, "options": {"chunk_words": 2700}}
        job_id = (await http.post("/v1/jobs", json=spec)).json()["id"]
        ctx = await browser.new_context(viewport={"width": 1366, "height": 768})
        page = await ctx.new_page()
        violations = csp_errors(page)
        await sign_in(page, api_url, user.api_key)
        await page.goto(f"{api_url}/jobs/{job_id}")

        # The document grows while the job runs: chunks appear one by one, under their headings.
        seen: list[tuple[int, str]] = []
        probe = "[document.querySelectorAll('#doc .chunk').length, document.querySelector('#status').textContent]"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not seen or seen[-1][1] != "succeeded":
            assert loop.time() < deadline, seen
            n, status = await page.evaluate(probe)
            if not seen or seen[-1] != (n, status):
                seen.append((n, status))
            await asyncio.sleep(0.05)
        growing = [n for n, status in seen if status == "running" and n > 0]
        assert len(set(growing)) >= 2, seen  # at least two sizes of the document seen mid-job
        await until(page, "document.querySelector('#live').textContent === 'complete'")
        out = await http.get(f"/v1/jobs/{job_id}/output")
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        events = (await http.get(f"/v1/jobs/{job_id}/audit")).json()["events"]
        assert count_words(await page.locator("#doc").inner_text()) == int(out.headers["X-Quire-Word-Count"])
        assert await page.locator("#doc .chunk").count() == job["progress"]["chunks_total"]
        assert await page.locator("#doc h3").text_content() == job["title"]
        assert await page.locator("#doc h4").count() == 2  # the chapters
        # Read incrementally: after the first read, a read sends only the chunks committed since.
        reads = [e["data"] for e in events if e["kind"] == "user" and e["action"] == "read_draft"]
        assert any(r["after"] > 0 and 0 < len(r["chunks"]) < job["progress"]["chunks_total"] for r in reads), reads
        await shot(page, "job-story.png", tmp_path)

        # Every event written inside an activity is in the step of that activity, however the log
        # interleaves them; the rest (submission, workflow start, views, reads) are steps of their own.
        starts = {e["seq"]: e for e in events if e["kind"] == "activity" and e["action"] == "start"}
        by_seq = {e["seq"]: e for e in events}
        steps = await page.evaluate("window.quireAudit.steps")
        grouped = sorted(s for step in steps for s in step["seqs"])
        assert grouped == list(range(1, len(grouped) + 1))  # each event in exactly one step
        for step in steps:
            inside = [by_seq[s] for s in step["seqs"]]
            if step["activity"]:
                assert step["id"] in starts and step["activity"] == starts[step["id"]]["data"]["activity"]
                assert all(e["seq"] == step["id"] or e["data"]["activity_seq"] == step["id"] for e in inside)
            else:
                assert all("activity_seq" not in e["data"] for e in inside)
        writes = [s for s in steps if s["activity"] == "write_chunk"]
        assert len(writes) == job["progress"]["chunks_total"]
        assert {s["label"] for s in writes} == {f"chunk {n}" for n in range(1, len(writes) + 1)}

        # A step is one line with its outcome and duration; opened, it shows its SQL (with the rows written).
        step = page.locator("details.step[data-activity=write_chunk]").nth(1)
        line = await step.locator("summary").text_content()
        assert "PASS" in line and "chunk done" in line and " events" in line
        await step.locator("summary .verdict").click()
        await step.locator(".events .line[data-kind=sql]").first.wait_for()
        shown = await step.locator(".events .line").evaluate_all("els => els.map(e => e.dataset.kind)")
        # Rows ride on their SQL, and an attempt's length verdict on its chunk event.
        assert {"sql", "llm", "chunk"} <= set(shown) and not {"row", "length"} & set(shown)
        attempts = await step.locator(".events .line[data-kind=chunk]").all_text_contents()
        assert any("attempt 1" in t and ("PASS" in t or "FAIL" in t) for t in attempts), attempts
        assert "INSERT INTO chunk_versions" in await step.locator(".events").text_content()

        # A chunk's step links to the chunk in the document.
        label = await step.locator("summary a.to-chunk").text_content()
        await step.locator("summary a.to-chunk").click()
        n = label.split()[1]
        await until(page, f"location.hash === '#chunk-{n}' && document.querySelector('#chunk-{n}').matches(':target')")

        # Filters still apply, and the raw view has every event.
        await page.get_by_label("Filter by kind").select_option("seam")
        visible = await page.locator("#story details.step:not([hidden])").evaluate_all(
            "els => els.map(e => e.dataset.activity)"
        )
        assert visible == ["complete_unit"] * len(visible) and visible
        await page.get_by_role("button", name="Raw").click()
        assert await page.locator("#lines .line").count() == len(grouped)
        assert violations == []
        await ctx.close()


async def test_the_coherence_section_shows_each_finding_a_click_from_its_chunk_and_event(
    browser, api_url, fake, user, tmp_path
):
    from tests.helpers import FACT, LIE, _fact, _lie, auth

    fake.reset(ratio=(1.0, 1.15), plants=[_fact(nth=2), _lie(nth=4)])
    async with httpx.AsyncClient(base_url=api_url, headers=auth(user), timeout=30) as http:
        spec = {"kind": "generate", "prompt": "Compass rose", "target_words": 4000}
        job_id = (await http.post("/v1/jobs", json=spec)).json()["id"]
        ctx = await browser.new_context(viewport={"width": 1366, "height": 900})
        page = await ctx.new_page()
        violations = csp_errors(page)
        await sign_in(page, api_url, user.api_key)
        await page.goto(f"{api_url}/jobs/{job_id}")
        await until(page, "document.querySelector('#live').textContent === 'complete'", within=60)
        rep = (await http.get(f"/v1/jobs/{job_id}/coherence")).json()
        item = next(i for i in rep["items"] if i["category"] == "characters")
        finding = page.locator(f"#coherence-list li[data-finding='{item['id']}']")
        await finding.wait_for()
        shown = await finding.text_content()
        assert "characters" in shown and "repaired" in shown and LIE in shown and FACT in shown
        # The section is refreshed once more when the job ends (a finding can show it earlier): it
        # comes to say what the API says.
        await until(page, f"document.querySelector('#coherence-summary').textContent === {json.dumps(rep['summary'])}")
        await shot(page, "job-coherence.png", tmp_path)
        # A click away from the chunk it was found in, and from the event that recorded it.
        await finding.locator("a.to-chunk").click()
        n = item["chunk"] + 1
        await until(page, f"location.hash === '#chunk-{n}' && document.querySelector('#chunk-{n}').matches(':target')")
        await finding.locator("a.to-seq").click()
        await until(page, f"document.querySelector('#lines .focus')?.dataset.seq === '{item['audit_seq']}'")
        assert "continuity" in await page.locator("#lines .focus").text_content()
        assert violations == []
        await ctx.close()
