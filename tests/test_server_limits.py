"""Bad input, limits and auth on a live server: clear 4xx errors, never a 5xx or a stack trace."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

KEY = "test-secret-key"


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    """An API key and a tiny queue: one running request, one waiting."""
    from live_server import start_server

    live = start_server(tmp_path_factory.mktemp("guarded") / "data", "--api-key", KEY,
                        "--max-running-requests", "1", "--max-waiting-requests", "1")
    yield live
    live.stop()


def assert_error(response: httpx.Response, status: int, mentions: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert "Traceback" not in response.text and body["message"]
    assert mentions in body["message"], body
    return body


@pytest.mark.parametrize(
    "fields,mentions",
    [
        ({"colour": "red"}, "colour"),
        ({"size": "huge"}, "size"),
        ({"size": "100x100"}, "height"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": "many"}, "num_frames"),
        ({"seconds": 4, "num_frames": 33}, "not both"),
        ({"pyramid_num_inference_steps_list": [2, 2]}, "pyramid_num_inference_steps_list"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"seed": -5}, "seed"),
        ({"extra_params": {"rm": "-rf"}}, "extra_params.rm"),
        ({"input_reference": "not base64 at all!"}, "input_reference"),
        ({"input_reference": "data:image/png;base64," + base64.b64encode(b"png?").decode()}, "image"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_fields_are_422_naming_the_field(server, fields, mentions):
    body = {"prompt": "a fox", "size": "128x64", **fields}
    assert_error(httpx.post(f"{server.api}/videos", json=body), 422, mentions)


def test_bad_bodies(server):
    assert_error(httpx.post(f"{server.api}/videos", content=b"{not json", headers={"content-type": "application/json"}),
                 422, "JSON")
    assert_error(httpx.post(f"{server.api}/videos", json=[1, 2]), 422, "object")
    assert_error(httpx.post(f"{server.api}/videos", json={"prompt": "x", "model": "sora-2"}), 404, "sora-2")
    image = {"input_reference": ("a.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100, "image/png")}
    assert_error(httpx.post(f"{server.api}/videos", data={"prompt": "x"}, files=image), 422, "image")


def test_oversized_upload_is_413(server):
    files = {"input_reference": ("big.png", b"0" * (2 * 2**20), "image/png")}  # the server allows 1 MiB
    assert_error(httpx.post(f"{server.api}/videos", data={"prompt": "x"}, files=files), 413, "MiB")


def test_unknown_and_malicious_ids_are_404(server):
    for video_id in ("video_" + "0" * 32, "nope", "..", "video_../../jobs.sqlite3"):
        assert httpx.get(f"{server.api}/videos/{video_id}").status_code == 404
        assert httpx.get(f"{server.api}/videos/{video_id}/content").status_code == 404
        assert httpx.delete(f"{server.api}/videos/{video_id}").status_code == 404
    job = httpx.post(f"{server.api}/videos", json={"prompt": "x", "num_frames": 1, "size": "128x64"}).json()
    for name in ("..%2F..%2Fjobs.sqlite3", "resume.pt", "video.mp4", "seg_1.m4s"):
        assert httpx.get(f"{server.api}/videos/{job['id']}/stream/{name}").status_code == 404
    assert_error(httpx.get(f"{server.api}/videos/{job['id']}/content", params={"variant": "spritesheet"}), 422,
                 "variant")


def test_content_before_completion_is_409(server):
    job = httpx.post(f"{server.api}/videos", json={"prompt": "x", "num_frames": 330, "size": "320x192"}).json()
    assert_error(httpx.get(f"{server.api}/videos/{job['id']}/content"), 409, "not ready")
    httpx.delete(f"{server.api}/videos/{job['id']}")


def test_still_serving_after_bad_requests(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.post(f"{server.api}/videos/sync", json={"prompt": "still here", "num_frames": 1, "size": "128x64"},
                      timeout=60).status_code == 200


def test_api_key(guarded_server):
    url = guarded_server.api
    body = assert_error(httpx.get(f"{url}/models"), 401, "API key")
    assert body["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{url}/models", params={"api_key": KEY}).status_code == 200  # for players and browsers
    assert httpx.get(f"{guarded_server.url}/health").status_code == 200  # probes need no key


def test_full_queue_is_429_with_retry_after(guarded_server):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "long", "num_frames": 990, "size": "320x192"}
    first = httpx.post(f"{guarded_server.api}/videos", json=body, headers=headers).json()
    while httpx.get(f"{guarded_server.api}/videos/{first['id']}", headers=headers).json()["status"] != "in_progress":
        time.sleep(0.02)
    second = httpx.post(f"{guarded_server.api}/videos", json=body, headers=headers)
    assert second.status_code == 200  # waits for the slot
    third = httpx.post(f"{guarded_server.api}/videos", json=body, headers=headers)
    assert_error(third, 429, "queue")
    assert int(third.headers["retry-after"]) >= 1
    for job in (first, second.json()):
        assert httpx.delete(f"{guarded_server.api}/videos/{job['id']}", headers=headers).status_code == 200
