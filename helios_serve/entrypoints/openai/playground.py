"""The web playground at ``/``: one static page (HTML, CSS, JS in playground/) that uses the
public API like any client. It needs nothing from the internet; the API key, when the server
has one, is typed into the page and sent by it, so the page itself is served to anyone."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from .errors import ApiError

PAGE_DIR = Path(__file__).with_name("playground")
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}


def install_playground(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/playground/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise ApiError(404, "not_found", f"no playground file {name!r}", "name")
        return FileResponse(PAGE_DIR / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
