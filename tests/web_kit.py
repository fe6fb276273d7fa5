"""The browser the web tests drive (Debian's Chromium, headless, through Playwright) and what they
do with a page: wait on it, hear its CSP violations, screenshot it, sign in. A pytest plugin
(tests/conftest.py's ``pytest_plugins``): its ``browser`` fixture is found by name, one a module."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).parent.parent / "docs"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        await b.close()


async def until(page: Page, expr: str, within: float = 30) -> None:
    """Poll the page until ``expr`` is true. (Playwright's wait_for_function evaluates its predicate
    with eval, which the pages' CSP rightly refuses; page.evaluate goes through DevTools.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await page.evaluate(expr):
        if loop.time() > deadline:
            raise TimeoutError(f"not true after {within} s: {expr}")
        await asyncio.sleep(0.05)


def csp_errors(page: Page) -> list[str]:
    """Console messages of CSP or Trusted Types violations on this page, as they happen."""
    seen: list[str] = []
    page.on(
        "console",
        lambda m: seen.append(m.text) if "Content Security Policy" in m.text or "TrustedHTML" in m.text else None,
    )
    page.on("pageerror", lambda e: seen.append(str(e)))
    return seen


async def shot(page: Page, name: str, tmp: Path) -> None:
    target = DOCS / name if os.environ.get("QUIRE_UPDATE_SCREENSHOTS") else tmp / name
    await page.screenshot(path=str(target))


async def read_download(dl: object) -> str:
    path = await (await dl.value).path()  # type: ignore[attr-defined]
    return await asyncio.to_thread(Path(path).read_text)


async def sign_in(page: Page, api_url: str, key: str) -> None:
    await page.goto(api_url + "/")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="New job").wait_for()
