"""The Audit Panel's story says what happened, in a real browser: a chunk accepted short and made up
for by a top-up reads SHORT (not FAIL), the document's short round the same, and a request the API
refused reads "request refused" with its reason (not "error error rollback")."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import auth
from tests.web_kit import csp_errors, sign_in, until

pytestmark = pytest.mark.usefixtures("worker")


async def test_the_story_reads_short_and_refused_for_what_they_are(browser, api_url, fake, user):
    # One attempt a chunk from a model that writes 30-60% of what it is asked: every chunk is
    # accepted short, and finalize tops the document up until it holds its words.
    fake.reset(ratio=(0.3, 0.6))
    spec = {"kind": "generate", "prompt": "Rope walks", "target_words": 600,
            "options": {"chunk_words": 300, "max_attempts_per_chunk": 1, "max_rounds": 20}}  # fmt: skip
    async with httpx.AsyncClient(base_url=api_url, headers=auth(user), timeout=30) as http:
        job_id = (await http.post("/v1/jobs", json=spec)).json()["id"]
        ctx = await browser.new_context(viewport={"width": 1366, "height": 900})
        page = await ctx.new_page()
        violations = csp_errors(page)
        await sign_in(page, api_url, user.api_key)
        await page.goto(f"{api_url}/jobs/{job_id}")
        await until(page, "document.querySelector('#live').textContent === 'complete'", within=120)
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "succeeded"
        r = await http.post(f"/v1/jobs/{job_id}/nodes/999999999/regenerate", json={})
        assert r.status_code == 404

    await page.reload()
    await until(page, "document.querySelector('#live').textContent === 'complete'")

    def verdicts(activity: str) -> str:
        found = f"document.querySelectorAll('details.step[data-activity={activity}] summary .verdict')"
        return f"[...{found}].map(v => v.textContent)"

    chunks = await page.evaluate(verdicts("write_chunk"))
    assert "SHORT" in chunks and "FAIL" not in chunks, chunks
    rounds = await page.evaluate(verdicts("finalize"))
    assert rounds[-1] == "PASS" and set(rounds[:-1]) == {"SHORT"}, rounds
    refused = page.locator("details.step", has_text="request refused")
    assert await refused.count() == 1
    line = await refused.locator("summary").text_content()
    assert "refused" in await refused.locator("summary .verdict").text_content()
    assert "has no node 999999999" in line and "error" not in line and "rollback" not in line, line
    assert violations == []
    await ctx.close()
