"""The author's loop in a real browser (Debian's Chromium, Playwright), under the pages' strict CSP:
the plan edited and approved on the job page, the book map live with its timeline, a chapter
locked, its neighbour regenerated with an instruction, the new version and its diff.

QUIRE_UPDATE_SCREENSHOTS=1 refreshes docs/job-plan.png and docs/job-map.png from this run."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.web_kit import csp_errors, shot, sign_in, until

pytestmark = pytest.mark.usefixtures("worker")


async def test_plan_review_map_lock_regenerate_and_diff_in_the_browser(browser, api_url, fake, user, tmp_path):
    fake.reset(ratio=(1.0, 1.15), delay_s=0.02)
    spec = {"kind": "generate", "prompt": "Harbour lights", "target_words": 12_000,
            "options": {"chunk_words": 2500, "review_plan": True}}  # fmt: skip
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {user.api_key}"}) as http:
        job_id = (await http.post("/v1/jobs", json=spec)).json()["id"]
    ctx = await browser.new_context(viewport={"width": 1366, "height": 900})
    page = await ctx.new_page()
    violations = csp_errors(page)
    await sign_in(page, api_url, user.api_key)
    await page.goto(f"{api_url}/jobs/{job_id}")

    # The outline to edit while the plan waits: retitle and re-budget one chapter, remove the other, add one.
    await until(page, "document.querySelectorAll('#outline .outline-item').length === 2", 60)
    await page.get_by_label("Title of chapter 1").fill("The Sea Wall")
    await page.get_by_label("Words of chapter 1").fill("3000")
    assert "short" in await page.locator("#plan-total").text_content()
    await page.get_by_label("Words of chapter 1").fill("7000")
    await page.get_by_role("button", name="Remove chapter 2").click()
    await page.get_by_role("button", name="Add").click()
    await page.get_by_label("Title of chapter 2").fill("Harbour Lights")
    await page.get_by_label("Words of chapter 2").fill("5500")
    await page.get_by_label("Summary of chapter 2").fill("The lights come on, one by one, as the boats return.")
    # Each box says what it is for, on the page, not only to a screen reader.
    labels = await page.locator("#outline .outline-item").nth(1).locator("label.o-field").all_text_contents()
    assert labels == ["Summary", "Key points, one a line"]
    assert "12,500 words planned" in await page.locator("#plan-total").text_content()
    await shot(page, "job-plan.png", tmp_path)
    await page.get_by_role("button", name="Approve plan").click()
    await until(page, "document.querySelector('#plan-review').hidden")

    # The book map, live: two tiles in plan order, each done by the end; a timeline drawn as SVG.
    await until(page, "document.querySelector('#status').textContent === 'succeeded'", 120)
    await until(page, "[...document.querySelectorAll('#map .tile')].every(t => t.dataset.state === 'done')", 30)
    titles = await page.locator("#map .tile .t-title").all_text_contents()
    assert titles == ["The Sea Wall", "Harbour Lights"]
    assert await page.locator("#timeline svg rect.bar").count() == 2
    await until(page, "!document.querySelector('#estimate-box').hidden")
    assert "used / estimated" in await page.locator("#estimate").text_content()

    # Lock the second chapter; regenerate the first with an instruction.
    await page.get_by_role("button", name="Lock Harbour Lights").click()
    await until(page, "document.querySelector('#map .tile[data-state=locked]') !== null")
    assert await page.get_by_role("button", name="Regenerate Harbour Lights").count() == 0
    await page.get_by_role("button", name="Regenerate The Sea Wall").click()
    await page.get_by_label("Instruction (optional)").fill("make the ending darker")
    await page.locator("#np-go").click()
    await until(page, "/done: document version 2/.test(document.querySelector('#np-status').textContent)", 120)
    await until(page, "document.querySelector('#map .tile[data-state=regenerated]') !== null")
    states = await page.locator("#map .tile").evaluate_all("els => els.map(e => e.dataset.state)")
    assert states == ["regenerated", "locked"]

    # The versions, and the diff between them, line by line.
    await until(page, "!document.querySelector('#versions').hidden")
    await page.get_by_role("button", name="Diff with v1").click()
    await until(
        page, "document.querySelectorAll('#diff .add').length > 0 && document.querySelectorAll('#diff .del').length > 0"
    )
    assert re.match(r"v1 → v2: \+\d+ −\d+ lines", await page.locator("#diff-title").text_content())
    await page.get_by_role("button", name="History The Sea Wall").click()
    await until(page, "/edit 1 · regenerate by/.test(document.querySelector('#np-edits').textContent)")
    assert await page.get_by_role("button", name="as first written").count() == 1
    await shot(page, "job-map.png", tmp_path)
    assert violations == []
    await ctx.close()
