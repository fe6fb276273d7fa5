"""The web pages: plain HTML/CSS/JS from api/static, no build step and no network at run time.

Pages carry no data themselves; their scripts call the /v1 API with the key the user signed in
with (kept in sessionStorage, sent as a Bearer header, never put in a URL) and put what comes back
into the DOM as text only. Each page is served with api.security.PAGE_CSP: no inline script, style
or handler, and no HTML from strings (Trusted Types), so a slip there fails loudly instead of running.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.security import page_headers

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def submit_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=page_headers())


@router.get("/jobs/{job_id}")
async def job_page(job_id: str) -> FileResponse:
    return FileResponse(STATIC / "job.html", headers=page_headers())


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    # Browsers ask for it whatever the page says; the pages name the SVG itself.
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


@router.get("/history")
async def history_page() -> FileResponse:
    return FileResponse(STATIC / "history.html", headers=page_headers())
