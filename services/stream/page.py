"""The student page: plain HTML, CSS and JS that follow a student's grades in the browser."""

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class RevalidatedFiles(StaticFiles):
    """Static files a browser checks again (by ETag) before each use: no build step names
    them by content, so a new release must not wait for a stale copy to expire."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


page_router = APIRouter()
page_router.mount("/static", RevalidatedFiles(directory=STATIC), name="static")


@page_router.get("/", include_in_schema=False)
async def student_page() -> FileResponse:
    """The page; its token arrives in the URL's fragment, which browsers never send."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)
