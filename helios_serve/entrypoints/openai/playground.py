"""The web playground at ``/``: one static page (HTML, CSS, JS in playground/) that uses the
public API like any client. It needs nothing from the internet; the API key, when the server
has one, is typed into the page and sent by it, so the page itself is served to anyone."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from ...model_executor.checkpoint import RANDOM_MODEL, TINY_MODELS
from .errors import ApiError

PAGE_DIR = Path(__file__).with_name("playground")
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}


def random_models() -> dict[str, str]:
    """The built-in models whose videos show noise, not the prompt, with what each is: the page
    warns when it serves one (a first try with the default helios-tiny looks broken otherwise)."""
    tiny = {name: "a tiny random test model" for name in TINY_MODELS}
    return {**tiny, RANDOM_MODEL: "the 14B architecture with random weights (a speed test model)"}


def install_playground(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    # Declared before /playground/{name}, which would otherwise answer this path with a 404.
    @app.get("/playground/random-models.json", include_in_schema=False)
    async def random_model_names() -> dict[str, str]:
        return random_models()

    @app.get("/playground/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise ApiError(404, "not_found", f"no playground file {name!r}", "name")
        return FileResponse(PAGE_DIR / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
