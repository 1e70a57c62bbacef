"""The web playground in a real browser: Debian's Chromium driven by Playwright, against a live
helios-tiny server. Screenshots go to $HELIOS_TEST_ARTIFACTS (default: test-artifacts/playground)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from live_server import start_server
from playwright.sync_api import sync_playwright

from helios_serve.model_executor.checkpoint import BUILTIN_MODELS, MODEL_ALIASES

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("HELIOS_TEST_ARTIFACTS", REPO / "test-artifacts")) / "playground"
API_KEY = "playground-secret"


def chromium_path() -> str:
    path = os.environ.get("HELIOS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the browser tests need Chromium: apt-get install chromium (scripts/install.sh test does it)"
    return path


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("playground") / "data")
    yield live
    live.stop()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser, url: str, **context):
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)

    def request_video(self, prompt: str, frames: int, size: str = "192x128") -> None:
        self.page.fill("#prompt", prompt)
        self.page.select_option("#length-unit", "frames")
        self.page.fill("#length", str(frames))
        self.page.select_option("#size", size)
        self.page.click("#generate")

    def buffered_end(self) -> float:
        return self.page.evaluate("(v => v.buffered.length ? v.buffered.end(v.buffered.length - 1) : 0)"
                                  "(document.getElementById('player'))")

    def status(self) -> str:
        return self.page.inner_text("#status")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def test_page_loads_cleanly_labels_every_control_and_fits_a_phone(browser, server):
    assert f"playground  {server.url}/" in server.log()  # serve prints where the page is
    desktop = Page(browser, server.url + "/", viewport={"width": 1280, "height": 900})
    desktop.page.wait_for_function("document.getElementById('model-name').textContent === 'helios-tiny'")
    unlabeled = desktop.page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .filter(el => !el.closest('[hidden]') && !el.labels.length && !el.getAttribute('aria-label'))
        .map(el => el.id)""")
    assert unlabeled == []
    assert desktop.page.locator("[role=status]").count() == 1 and desktop.page.locator("[role=alert]").count() == 1
    # helios-tiny's videos are noise: the page says so before anyone waits for one.
    desktop.page.wait_for_selector("#model-warning:not([hidden])")
    assert desktop.page.inner_text("#model-warning").startswith(
        "helios-tiny is a tiny random test model: its videos show noise, not the prompt.")
    desktop.shot("desktop-empty")
    assert desktop.errors == []
    desktop.close()

    phone = Page(browser, server.url + "/", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone.page.wait_for_function("document.getElementById('model-name').textContent === 'helios-tiny'")
    phone.page.wait_for_selector("#model-warning:not([hidden])")  # the banner and examples fit too
    width = phone.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at phone width: {width}"
    assert phone.page.locator("#generate").bounding_box()["height"] >= 44  # a comfortable touch target
    phone.shot("phone-empty")
    assert phone.errors == []
    phone.close()


def test_the_random_model_warning_names_only_the_built_in_test_models(server):
    random_models = httpx.get(server.url + "/playground/random-models.json").json()
    assert set(random_models) == set(BUILTIN_MODELS)  # every built-in model has random weights
    assert not set(random_models) & set(MODEL_ALIASES)  # the released checkpoints are real


def test_no_warning_for_a_released_model(browser, tmp_path):
    # The simulator serves the released Distilled model's name and timings without its weights.
    served = start_server(tmp_path / "data", "helios-distilled", "--simulate", "h100")
    try:
        page = Page(browser, served.url + "/", viewport={"width": 1280, "height": 900})
        page.page.wait_for_function("document.getElementById('model-name').textContent === 'helios-distilled'")
        page.page.wait_for_load_state("networkidle")  # /ready and the random model list have been read
        assert page.page.is_hidden("#model-warning")
        assert page.errors == []
        page.close()
    finally:
        served.stop()


def test_an_example_prompt_fills_the_prompt_box(browser, server):
    page = Page(browser, server.url + "/", viewport={"width": 1280, "height": 900})
    assert "HeliosBench" in page.page.inner_text("#examples-label")
    assert page.page.locator("#examples button").count() >= 3
    assert page.page.input_value("#prompt") == ""
    page.page.click("#examples button:has-text('Pirate ships')")
    prompt = page.page.input_value("#prompt")
    assert "two pirate ships" in prompt and len(prompt) > 200  # the whole benchmark prompt, not the label
    assert page.page.evaluate("document.activeElement.id") == "prompt"  # ready to edit
    page.page.click("#examples button:has-text('Paper airplanes')")
    assert "paper airplanes" in page.page.input_value("#prompt") and "pirate" not in page.page.input_value("#prompt")
    assert page.status() == "Nothing generated yet."  # an example does not submit by itself
    assert page.errors == []
    page.close()


def wait_for_thumbnail(page: Page, prompt: str):
    """The thumbnail of ``prompt``'s video in the recent list, once the browser has decoded it."""
    thumbnail = page.page.locator(f"#jobs li:has-text('{prompt}') img.thumb")
    thumbnail.scroll_into_view_if_needed()  # it loads lazily
    page.page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=thumbnail.element_handle())
    return thumbnail


def test_a_video_plays_while_it_is_generated(browser, server):
    page = Page(browser, server.url + "/", viewport={"width": 1280, "height": 900})
    page.request_video("a lantern in the rain", frames=990)
    seen_while_running = []
    deadline = time.monotonic() + 120
    while not page.status().startswith("Done") and time.monotonic() < deadline:
        if page.status().startswith("Chunk"):
            seen_while_running.append(page.buffered_end())
        time.sleep(0.1)
    assert page.status().startswith("Done"), page.status()
    growth = sorted({end for end in seen_while_running if end > 0})  # 0 until the first segment is fetched
    assert len(growth) >= 3, f"the buffered range did not grow during the job: {seen_while_running}"
    page.page.wait_for_function("document.getElementById('player').currentTime > 0.5")  # it plays
    page.shot("desktop-playing")
    assert page.buffered_end() == pytest.approx(989 / 24, abs=0.1)  # every chunk reached the player
    link = page.page.get_attribute("#download-link", "href")
    download = httpx.get(server.url + link)
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    assert "a lantern in the rain" in page.page.inner_text("#jobs")
    assert page.errors == []
    page.close()


def test_cancel_stops_the_job(browser, server):
    page = Page(browser, server.url + "/", viewport={"width": 1280, "height": 900})
    page.request_video("a very long drive", frames=6600)
    page.page.wait_for_function("document.getElementById('status').textContent.startsWith('Chunk')")
    video_id = httpx.get(f"{server.api}/videos?limit=1").json()["data"][0]["id"]
    page.page.click("#cancel")
    page.page.wait_for_function("document.getElementById('status').textContent === 'Cancelled.'")
    assert httpx.get(f"{server.api}/videos/{video_id}").status_code == 404
    assert page.page.is_disabled("#cancel") and page.page.is_enabled("#generate")
    page.shot("desktop-cancelled")
    assert page.errors == []
    page.close()


def test_live_stream_takes_a_new_prompt_while_it_plays(browser, server):
    page = Page(browser, server.url + "/", viewport={"width": 1280, "height": 900})
    page.page.fill("#prompt", "a fox walks through snow")
    page.page.check("#live")
    assert page.page.is_disabled("#length")
    page.page.select_option("#size", "192x128")
    page.page.click("#generate")
    page.page.wait_for_function("document.getElementById('status').textContent.startsWith('Live · chunk')")
    video_id = httpx.get(f"{server.api}/videos?limit=1").json()["data"][0]["id"]
    page.page.fill("#steer-prompt", "the fox starts to run")
    page.page.click("#steer")
    page.page.wait_for_function("document.getElementById('status').textContent.includes('from chunk')")
    schedule = httpx.get(f"{server.api}/videos/{video_id}").json()["prompt_schedule"]
    switch = schedule[-1]
    assert switch["prompt"] == "the fox starts to run" and switch["transition_chunks"] == 1
    # The new prompt's chunk reaches the player a chunk or two later.
    page.page.wait_for_function(f"document.getElementById('player').buffered.length && "
                                f"document.getElementById('player').buffered.end(0) > {switch['from_chunk'] * 33 / 24}")
    page.shot("desktop-live-steered")
    page.page.click("#cancel")
    page.page.wait_for_function("document.getElementById('status').textContent === 'Stopped.'")
    assert httpx.get(f"{server.api}/videos/{video_id}").status_code == 404
    assert page.errors == []
    page.close()


def test_a_finished_video_is_extended_from_the_recent_list(browser, server):
    page = Page(browser, server.url + "/", viewport={"width": 1280, "height": 900})
    page.request_video("a paper boat", frames=66)
    page.page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')")
    original = httpx.get(f"{server.api}/videos?limit=1").json()["data"][0]
    # The finished video's first frame in the recent list, in a fixed box so the list does not jump.
    thumbnail = wait_for_thumbnail(page, "a paper boat")
    natural = thumbnail.evaluate("image => `${image.naturalWidth}x${image.naturalHeight}`")
    assert natural == original["size"] and thumbnail.get_attribute("loading") == "lazy"
    box = thumbnail.bounding_box()
    assert (box["width"], box["height"]) == (112, 64)
    page.page.fill("#prompt", "the boat reaches the sea")
    page.page.click("#jobs li:has-text('a paper boat') button.extend")
    deadline = time.monotonic() + 30
    while (extended := httpx.get(f"{server.api}/videos?limit=1").json()["data"][0])["id"] == original["id"]:
        assert time.monotonic() < deadline, "no extension was created"
        time.sleep(0.1)
    # Done with the extension: its download link is offered.
    page.page.wait_for_function(f"document.getElementById('download-link').href.includes('{extended['id']}')")
    extended = httpx.get(f"{server.api}/videos/{extended['id']}").json()
    assert extended["id"] != original["id"] and extended["total_chunks"] == 4
    assert [entry["prompt"] for entry in extended["prompt_schedule"]] == ["a paper boat", "the boat reaches the sea"]
    assert page.buffered_end() == pytest.approx(extended["num_frames"] / 24, abs=0.1)  # the whole video plays
    page.shot("desktop-extended")
    assert page.errors == []
    page.close()


def test_a_server_with_an_api_key_and_a_served_model_name(browser, tmp_path):
    keyed = start_server(tmp_path / "data", "--api-key", API_KEY, "--served-model-name", "studio-video")
    try:
        page = Page(browser, keyed.url + "/", viewport={"width": 1280, "height": 900})
        page.page.wait_for_selector("#error:not([hidden])")
        assert "API key" in page.page.inner_text("#error")
        # Under another name, and before the key is typed, the test model is still called what it is.
        page.page.wait_for_selector("#model-warning:not([hidden])")
        assert page.page.inner_text("#model-warning").startswith("helios-tiny is a tiny random test model")
        page.page.fill("#api-key", API_KEY)
        page.page.dispatch_event("#api-key", "change")
        # /v1/models answers now that the key is sent (the served names: another part's business).
        page.page.wait_for_function("!['…', 'unknown'].includes(document.getElementById('model-name').textContent)")
        page.request_video("a keyed fox", frames=99)
        page.page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')",
                                    timeout=60_000)
        assert page.buffered_end() > 0
        wait_for_thumbnail(page, "a keyed fox")  # an <img> cannot send the key as a header: the URL carries it
        page.shot("desktop-api-key")
        # The 401s of the first, keyless load are the only console errors.
        assert all("401" in error for error in page.errors), page.errors
        page.close()
    finally:
        keyed.stop()
