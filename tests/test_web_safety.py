"""Web safety and connection hygiene on live servers: what a hostile web page, a crafted link or
a misbehaving client can make the server do (issue 18, items 5 and 6)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
import threading
import time

import httpx
import pytest
import uvicorn
import websockets
from fastapi import Request

from helios_serve.config import HeliosConfig, ServerConfig
from helios_serve.entrypoints.openai.api_server import build_app
from helios_serve.entrypoints.openai.errors import public_message
from helios_serve.entrypoints.openai.streaming import STREAM_TOKEN_TTL_S, StreamTokens, hls_playlist
from helios_serve.entrypoints.openai.web_safety import HostPolicy
from live_server import free_port, start_server

KEY = "web-safety-key"
APP_ORIGIN = "https://app.example"
SMALL = {"size": "128x64"}
PLAYLIST_LINE = re.compile(r"#EXT[-A-Z0-9]*(:.*)?|stream/seg_\d{5}\.m4s(\?token=[\w.-]+)?")
"""Every line a playlist of ours may have; the map URI is checked apart."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """No API key, the default: the server that cross-site pages and DNS rebinding target."""
    live = start_server(tmp_path_factory.mktemp("open") / "data")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("keyed") / "data", "--api-key", KEY,
                        "--allowed-origins", APP_ORIGIN, "--allowed-hosts", "videos.internal")
    yield live
    live.stop()


def bearer(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def wait_completed(api: str, video_id: str, headers: dict | None = None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{api}/videos/{video_id}", headers=headers).json())["status"] != "completed":
        assert job["status"] in ("queued", "in_progress") and time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def multipart(fields: dict) -> dict:
    """Form fields for httpx's ``files=``: multipart/form-data without a file."""
    return {name: (None, str(value)) for name, value in fields.items()}


def video_ids(server) -> set[str]:
    return {job["id"] for job in httpx.get(f"{server.api}/videos", params={"limit": 100}).json()["data"]}


# -- HLS: no user input in playlists, tokens instead of the key ------------------------------------
@pytest.fixture(scope="module")
def keyed_video(keyed) -> str:
    created = httpx.post(f"{keyed.api}/videos", json={"prompt": "tokens", "num_frames": 66, **SMALL}, headers=bearer())
    assert created.status_code == 200, created.text
    return wait_completed(keyed.api, created.json()["id"], bearer())["id"]


def assert_only_playlist_lines(text: str) -> list[str]:
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and text.endswith("\n")
    for line in lines:
        if line.startswith("#EXT-X-MAP:"):
            assert re.fullmatch(r'#EXT-X-MAP:URI="stream/init\.mp4(\?token=[\w.-]+)?"', line), line
        else:
            assert PLAYLIST_LINE.fullmatch(line), f"a line the server did not write: {line!r}"
    return lines


def test_a_crafted_link_cannot_add_lines_to_a_playlist(server):
    job = httpx.post(f"{server.api}/videos", json={"prompt": "links", "num_frames": 33, **SMALL}).json()
    wait_completed(server.api, job["id"])
    crafted = 'x"\n#EXT-X-ENDLIST\n#EXTINF:1.0,\nhttp://evil.example/ad.m4s\r\n#EXT-X-KEY:METHOD=NONE'
    playlist = httpx.get(f"{server.api}/videos/{job['id']}/stream.m3u8", params={"api_key": crafted})
    assert playlist.status_code == 200
    lines = assert_only_playlist_lines(playlist.text)
    assert "evil.example" not in playlist.text and lines.count("#EXT-X-ENDLIST") == 1


def test_playlist_uris_carry_a_token_for_this_video_never_the_key(keyed, keyed_video):
    url = f"{keyed.api}/videos/{keyed_video}"
    playlist = httpx.get(f"{url}/stream.m3u8", params={"api_key": KEY})
    assert playlist.status_code == 200 and KEY not in playlist.text
    lines = assert_only_playlist_lines(playlist.text)
    segments = [line for line in lines if line.startswith("stream/seg_")]
    assert len(segments) == 2 and all("?token=" in line for line in segments)
    init = re.search(r'URI="(stream/init\.mp4\?token=[^"]+)"', playlist.text).group(1)
    for uri in (init, *segments):  # a player fetches them with no key at all
        assert httpx.get(f"{url}/{uri}").status_code == 200, uri
    token = segments[0].split("?token=")[1]
    name = segments[0].split("?")[0]
    assert_error(httpx.get(f"{url}/{name}"), 401, "invalid_api_key")
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert_error(httpx.get(f"{url}/{name}", params={"token": forged}), 401, "invalid_api_key")
    later = str(int(token.split(".")[0]) + 60) + "." + token.split(".")[1]  # a longer life, same signature
    assert_error(httpx.get(f"{url}/{name}", params={"token": later}), 401, "invalid_api_key")
    # It opens this video's stream, nothing else: not another video's, not the video's MP4.
    other = httpx.post(f"{keyed.api}/videos", json={"prompt": "other", "num_frames": 1, **SMALL}, headers=bearer())
    other_id = other.json()["id"]
    wait_completed(keyed.api, other_id, bearer())
    assert_error(httpx.get(f"{keyed.api}/videos/{other_id}/stream/init.mp4", params={"token": token}), 401,
                 "invalid_api_key")
    assert_error(httpx.get(f"{url}/content", params={"token": token}), 401, "invalid_api_key")


def test_stream_url_opens_the_playlist_without_the_key(keyed, keyed_video):
    answer = httpx.get(f"{keyed.api}/videos/{keyed_video}/stream_url", headers=bearer())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["url"].startswith(f"/v1/videos/{keyed_video}/stream.m3u8?token=") and KEY not in body["url"]
    assert 0 < body["expires_at"] - time.time() <= STREAM_TOKEN_TTL_S
    playlist = httpx.get(keyed.url + body["url"])
    assert playlist.status_code == 200 and playlist.text.startswith("#EXTM3U")
    assert_error(httpx.get(f"{keyed.api}/videos/{keyed_video}/stream_url"), 401, "invalid_api_key")


def test_the_playgrounds_native_hls_player_gets_a_token_never_the_key(keyed):
    """Browsers without Media Source Extensions (iPhones) play the playlist natively, a player
    that cannot send the key: the page asks for a stream_url and plays that."""
    from playwright.sync_api import sync_playwright
    from test_playground import chromium_path

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        context = browser.new_context()
        context.add_init_script("delete window.MediaSource; delete window.ManagedMediaSource;")
        page = context.new_page()
        stream_requests = []
        page.on("request", lambda request: "/stream" in request.url and stream_requests.append(request.url))
        page.goto(keyed.url + "/")
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.getElementById('model-name').textContent === 'helios-tiny'")
        page.fill("#prompt", "a native player")
        page.select_option("#length-unit", "frames")
        page.fill("#length", "99")
        page.select_option("#size", "192x128")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=60_000)
        page.wait_for_function("document.getElementById('player').readyState >= 2", timeout=30_000)  # it plays
        source = page.get_attribute("#player", "src")
        browser.close()
    assert "/stream.m3u8?token=" in source and KEY not in source
    assert any("/stream/init.mp4?token=" in url for url in stream_requests), stream_requests
    assert all(KEY not in url for url in stream_requests), stream_requests


def test_stream_tokens_expire_and_are_bound_to_the_key():
    now = [1_000_000.0]
    tokens = StreamTokens("key", clock=lambda: now[0])
    token, expires = tokens.issue("video_a")
    assert expires == 1_000_000 + STREAM_TOKEN_TTL_S and tokens.valid("video_a", token)
    assert not tokens.valid("video_b", token) and not StreamTokens("other key").valid("video_a", token)
    for malformed in ("", ".", "abc.def", f"{expires}", f"-1.{token.split('.')[1]}", "9" * 40 + ".x"):
        assert not tokens.valid("video_a", malformed), malformed
    now[0] = expires + 1
    assert not tokens.valid("video_a", token)
    assert not StreamTokens(None).enabled


def test_a_playlist_refuses_a_query_that_is_not_url_encoded():
    assert "seg_00000.m4s?token=1.a-b_c" in hls_playlist(1, 33, 24, True, "?token=1.a-b_c")
    for bad in ('?api_key=x"', "?a=b\n#EXT-X-ENDLIST", "?a=b\r", "?a=b c", "?a=é"):
        with pytest.raises(ValueError):
            hls_playlist(1, 33, 24, True, bad)


# -- cross-site requests ---------------------------------------------------------------------------
def test_posts_of_other_content_types_are_415_and_create_nothing(server):
    before = video_ids(server)
    body = json.dumps({"prompt": "from another site", "num_frames": 1, **SMALL})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream", None):
        headers = {"content-type": content_type} if content_type else {}
        answer = httpx.post(f"{server.api}/videos", content=body, headers=headers)
        error = assert_error(answer, 415, "unsupported_media_type")
        assert "application/json" in error["message"] and "multipart/form-data" in error["message"]
    form = httpx.post(f"{server.api}/videos/sync", data={"prompt": "a form", "num_frames": "1", **SMALL})
    assert_error(form, 415, "unsupported_media_type")
    assert video_ids(server) == before
    ok = httpx.post(f"{server.api}/videos", files=multipart({"prompt": "multipart", "num_frames": 1, **SMALL}))
    assert ok.status_code == 200, ok.text


def test_a_page_of_another_site_cannot_post_even_multipart(server):
    """multipart/form-data is a 'simple' type too: an HTML form on any site may send it, with no
    preflight. The browser names that site in Origin; only the server's own pages may post."""
    before = video_ids(server)
    form = multipart({"prompt": "cross-site form", "num_frames": 1, **SMALL})
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):  # the last: another local server
        answer = httpx.post(f"{server.api}/videos", files=form, headers={"Origin": origin})
        assert_error(answer, 403, "origin_not_allowed")
    some_id = next(iter(before), "video_" + "0" * 32)
    assert_error(httpx.delete(f"{server.api}/videos/{some_id}", headers={"Origin": "http://evil.example"}), 403,
                 "origin_not_allowed")
    assert video_ids(server) == before
    same_origin = httpx.post(f"{server.api}/videos", files=form, headers={"Origin": server.url})
    assert same_origin.status_code == 200, same_origin.text


def test_cors_only_for_allowed_origins(server, keyed):
    preflight = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    allowed = httpx.options(f"{keyed.api}/videos", headers=preflight)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    listed = httpx.get(f"{keyed.api}/models", headers={**bearer(), "Origin": APP_ORIGIN})
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == APP_ORIGIN
    created = httpx.post(f"{keyed.api}/videos", json={"prompt": "from the app", "num_frames": 1, **SMALL},
                         headers={**bearer(), "Origin": APP_ORIGIN})
    assert created.status_code == 200 and created.headers["access-control-allow-origin"] == APP_ORIGIN
    elsewhere = httpx.options(f"{keyed.api}/videos", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in elsewhere.headers
    # Without --allowed-origins: no CORS headers at all.
    default = httpx.options(f"{server.api}/videos", headers={**preflight, "Origin": "https://evil.example"})
    assert not any(name.startswith("access-control-") for name in default.headers)


def test_host_header_must_name_the_server(server, keyed):
    port = server.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example", ""):
        assert_error(httpx.get(f"{server.api}/models", headers={"Host": host}), 400, "invalid_host")
    assert_error(httpx.get(f"{server.url}/health", headers={"Host": "evil.example"}), 400, "invalid_host")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "localhost"):
        assert httpx.get(f"{server.api}/models", headers={"Host": host}).status_code == 200, host
    # --allowed-hosts adds names; others stay refused.
    assert httpx.get(f"{keyed.api}/models", headers={**bearer(), "Host": "videos.internal"}).status_code == 200
    assert_error(httpx.get(f"{keyed.api}/models", headers={**bearer(), "Host": "other.internal"}), 400,
                 "invalid_host")


def test_the_names_a_server_answers_to():
    def policy(host: str, allowed: str | None = None, replica: bool = False) -> HostPolicy:
        return HostPolicy.for_server(ServerConfig(host=host, allowed_hosts=allowed), behind_ingress=replica)

    loopback = policy("127.0.0.1")
    assert all(loopback.allows(n) for n in ("127.0.0.1", "localhost", "::1"))
    assert not any(loopback.allows(n) for n in ("10.0.0.7", "evil.example", ""))
    everywhere = policy("0.0.0.0")
    assert everywhere.allows("10.0.0.7") and everywhere.allows("fe80::1") and everywhere.allows("localhost")
    assert not everywhere.allows("evil.example")
    named = policy("videos.example", "Cdn.Example, api.example")
    assert all(named.allows(n) for n in ("videos.example", "cdn.example", "api.example"))
    assert not named.allows("localhost") and not named.allows("10.0.0.7")
    assert policy("10.0.0.7", "*").allows("anything.example")
    # A Ray replica: its config is the ingress's, the ingress calls it by the replica's own address.
    replica = policy("videos.example", replica=True)
    assert replica.allows("10.0.0.7") and replica.allows("127.0.0.1") and not replica.allows("evil.example")


def test_allowed_origins_must_be_origins():
    assert ServerConfig(allowed_origins="https://a.example, http://b.example:8080/").allowed_origin_list == (
        "https://a.example", "http://b.example:8080")
    for bad in ("a.example", "https://a.example/path", "ftp://a.example"):
        with pytest.raises(ValueError, match="allowed_origins"):
            ServerConfig(allowed_origins=bad)


def test_the_websocket_refuses_pages_of_other_sites(server, keyed):
    uri = server.url.replace("http", "ws") + "/v1/realtime/video"

    async def handshake(target: str, **options) -> str:
        try:
            async with websockets.connect(target, **options) as ws:
                await ws.send(json.dumps({"type": "session.ping"}))  # not session.start: an error, then close
                return json.loads(await ws.recv())["type"]
        except websockets.InvalidStatus as exc:
            return f"refused {exc.response.status_code}"

    assert asyncio.run(handshake(uri, origin="http://evil.example")) == "refused 403"
    assert asyncio.run(handshake(uri, origin="null")) == "refused 403"
    assert asyncio.run(handshake(uri, origin=server.url)) == "error"  # the server's own page
    assert asyncio.run(handshake(uri)) == "error"  # no Origin: not a browser
    keyed_uri = keyed.url.replace("http", "ws") + f"/v1/realtime/video?api_key={KEY}"
    assert asyncio.run(handshake(keyed_uri, origin=APP_ORIGIN)) == "error"  # --allowed-origins
    assert asyncio.run(handshake(keyed_uri, origin="https://evil.example")) == "refused 403"


# -- errors: no paths, no traces -------------------------------------------------------------------
def test_errors_name_no_server_paths(tmp_path):
    """A model that failed to load (a Ray replica stays up with it; `serve` exits): its error
    reaches /ready, /health and every 503 naming the checkpoint by its last name only."""
    from fastapi.testclient import TestClient

    from helios_serve.config import HeliosConfig, ServerConfig
    from helios_serve.entrypoints.openai.api_server import build_app

    app = build_app(HeliosConfig(server=ServerConfig(data_dir=str(tmp_path / "data"))))
    client = TestClient(app, base_url="http://127.0.0.1")  # no lifespan: nothing loads
    checkpoint = tmp_path / "private-models" / "broken-checkpoint"
    app.state.server.load_error = (f"loading {checkpoint} failed: {checkpoint} is not a Helios checkpoint: "
                                   "scheduler_config.json is missing")
    answers = [client.get("/ready"), client.get("/health"), client.post("/v1/videos", json={"prompt": "x"})]
    assert [answer.status_code for answer in answers] == [503, 503, 503]
    assert "broken-checkpoint" in answers[2].json()["error"]["message"]
    assert "broken-checkpoint" in answers[0].json()["detail"]
    for answer in answers:
        assert str(tmp_path) not in answer.text and "private-models" not in answer.text, answer.text
        assert "Traceback" not in answer.text


def start_command(data_dir, port: int) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "helios_serve.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
            "--log-level", "warning"]


def test_public_messages_drop_traces_and_paths():
    message = ('loading /srv/models/helios failed: [Errno 2] No such file: "/srv/models/helios/config.json"\n'
               'Traceback (most recent call last):\n  File "/usr/lib/python3.11/x.py", line 3, in f\nOSError')
    cleaned = public_message(message)
    assert cleaned == 'loading .../helios failed: [Errno 2] No such file: ".../config.json"'
    kept = "see GET /v1/videos/video_1 or http://host:8000/a/b; ratio 16/9"
    assert public_message(kept) == kept
    assert public_message('File "/a/b.py", line 1, in g\nValueError: bad') == "ValueError: bad"


# -- connection hygiene -----------------------------------------------------------------------------
@contextlib.contextmanager
def serving(app):
    """``app`` under a real uvicorn on 127.0.0.1, in this process (no lifespan: no model loads)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_an_internal_error_is_a_json_500_and_the_connection_lives_on(tmp_path):
    app = build_app(HeliosConfig(server=ServerConfig(data_dir=str(tmp_path))))

    @app.get("/test-only/fail")
    async def fail():
        raise RuntimeError(f"an unexpected bug in {tmp_path}/module.py")

    @app.get("/test-only/connection")
    async def connection(request: Request) -> dict:
        return {"client_port": request.client.port}

    with serving(app) as url, httpx.Client(base_url=url) as client:
        first = client.get("/test-only/connection").json()["client_port"]
        for _ in range(3):
            failed = client.get("/test-only/fail")
            assert failed.status_code == 500 and failed.headers["content-type"] == "application/json"
            assert failed.json() == {"error": {"message": "internal server error", "type": "server_error",
                                               "param": None, "code": "internal_error"}}
            assert "connection" not in failed.headers or failed.headers["connection"] != "close"
            time.sleep(0.2)  # a closing server has closed by now
            assert client.get("/test-only/connection").json()["client_port"] == first  # the same connection


def test_a_ray_replica_answers_the_ingress_and_pages_of_the_public_endpoint(tmp_path):
    """The ingress calls a replica by the replica's IP address and passes the browser's Origin
    on, which names the ingress (the replica's config is the ingress's: --host, --port)."""
    config = HeliosConfig(server=ServerConfig(host="videos.example", port=8443, data_dir=str(tmp_path)))
    app = build_app(config, replica_id="replica-0-test")
    form = multipart({"prompt": "through the ingress", "num_frames": 1})
    with serving(app) as url:
        assert httpx.get(f"{url}/health").status_code == 200  # by its IP address, as the ingress calls it
        assert_error(httpx.get(f"{url}/health", headers={"Host": "evil.example"}), 400, "invalid_host")
        # Past the checks, the create meets a replica without a model (no lifespan here): 503.
        page = httpx.post(f"{url}/v1/videos", files=form, headers={"Origin": "https://videos.example:8443"})
        assert_error(page, 503, "not_ready")
        for origin in ("https://evil.example:8443", "https://videos.example:9999", url):
            assert_error(httpx.post(f"{url}/v1/videos", files=form, headers={"Origin": origin}), 403,
                         "origin_not_allowed")


def test_405_names_the_allowed_methods(server):
    answer = httpx.put(f"{server.api}/videos", json={})
    assert_error(answer, 405, "http_error")
    assert set(answer.headers["allow"].split(", ")) == {"GET", "POST"}
    answer = httpx.patch(f"{server.api}/videos/video_x")
    assert set(answer.headers["allow"].split(", ")) == {"GET", "DELETE"}
    assert httpx.delete(f"{server.api}/models").headers["allow"] == "GET"


@pytest.mark.parametrize("depth", [65, 2000, 200_000])
def test_deep_json_is_400_naming_the_problem(server, depth):
    deep = "[" * depth + "]" * depth
    unclosed = "[" * depth if depth > 1000 else deep  # too deep to be parsed at all, before it is invalid
    for body in (deep, f'{{"prompt": "x", "extra_params": {{"a": {deep}}}}}', unclosed):
        answer = httpx.post(f"{server.api}/videos", content=body, headers={"content-type": "application/json"})
        assert "nested" in assert_error(answer, 400, "nesting_too_deep")["message"]
    form = multipart({"prompt": "x", "extra_params": f'{{"a": {deep}}}'})
    assert_error(httpx.post(f"{server.api}/videos", files=form), 400, "nesting_too_deep")
    shallow = "[" * 30 + "]" * 30  # deep enough for anything real, still fine: refused for its value only
    answer = httpx.post(f"{server.api}/videos", json={"prompt": "x", "extra_params": {"a": json.loads(shallow)}})
    assert answer.status_code == 422, answer.text


def test_deep_json_on_the_websocket_is_refused(server):
    async def first_reply() -> dict:
        async with websockets.connect(server.url.replace("http", "ws") + "/v1/realtime/video") as ws:
            await ws.send("[" * 100_000)
            return json.loads(await ws.recv())

    reply = asyncio.run(first_reply())
    assert reply["type"] == "error" and reply["code"] == "nesting_too_deep"


def metric(server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


CANCELLED = 'helios:request_success_total{finished_reason="cancelled",model_name="helios-tiny"}'
RUNNING = 'helios:num_requests_running{model_name="helios-tiny"}'


def test_a_sync_request_whose_client_hangs_up_is_cancelled(server):
    cancelled_before = metric(server, CANCELLED)
    body = json.dumps({"prompt": "nobody waits for me", "num_frames": 990, "size": "320x192"}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    request = (f"POST /v1/videos/sync HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port))) as client:
        client.sendall(request)
        deadline = time.monotonic() + 60
        while not (job := newest_job(server, "nobody waits for me")) or job["status"] != "in_progress":
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
    # The client is gone: the job is cancelled, the engine stops working on it.
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.api}/videos/{job['id']}").status_code != 404:
        assert time.monotonic() < deadline, "the job of a departed client kept running"
        time.sleep(0.1)
    while metric(server, RUNNING) != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert metric(server, CANCELLED) == cancelled_before + 1


def newest_job(server, prompt: str) -> dict | None:
    jobs = httpx.get(f"{server.api}/videos", params={"limit": 5}).json()["data"]
    return next((job for job in jobs if job["prompt"] == prompt), None)


def test_the_api_key_is_compared_in_constant_time(tmp_path, monkeypatch):
    """Every key a client offers (header, query, WebSocket alike) goes through hmac.compare_digest,
    never ``!=``, whose time would tell an attacker how many leading characters were right."""
    import hmac

    from starlette.requests import HTTPConnection

    from helios_serve.entrypoints.openai.api_server import ServerState
    from helios_serve.entrypoints.openai.errors import ApiError

    compared = []

    def recording_compare(supplied, expected):
        compared.append((supplied, expected))
        return supplied == expected

    monkeypatch.setattr(hmac, "compare_digest", recording_compare)
    state = ServerState(HeliosConfig(server=ServerConfig(data_dir=str(tmp_path), api_key=KEY)), None)

    def connection(headers=(), query=b"") -> HTTPConnection:
        return HTTPConnection({"type": "http", "headers": list(headers), "query_string": query})

    state.authorize(connection([(b"authorization", f"Bearer {KEY}".encode())]))
    for wrong in (connection([(b"authorization", b"Bearer web-safety-kez")]), connection(query=b"api_key=w"),
                  connection()):
        with pytest.raises(ApiError) as refused:
            state.authorize(wrong)
        assert refused.value.status == 401
    assert compared == [(KEY.encode(), KEY.encode()), (b"web-safety-kez", KEY.encode()), (b"w", KEY.encode()),
                        (b"", KEY.encode())]
