"""Fuzzing the live API with hypothesis: whatever a client sends, the answer is never a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from live_server import start_server

FIELDS = ["prompt", "model", "seconds", "size", "num_frames", "fps", "seed", "negative_prompt", "guidance_scale",
          "num_inference_steps", "pyramid_num_inference_steps_list", "priority", "realtime", "decoder",
          "input_reference", "video_reference", "extra_params", "is_amplify_first_chunk", "user"]
EXAMPLES = {"json": 300, "form": 120, "paths": 150}
COUNT = {"requests": 0}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=40), st.sampled_from(["64x64", "128x64", "0x0", "99999x99999", "4", "1,2,3", "vae", "data:,"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=3), max_leaves=6)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), values, max_size=8)
form_bodies = st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=30), max_size=8)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    # Small budgets: requests that happen to be valid queue (or get a 429) instead of hogging the machine.
    live = start_server(tmp_path_factory.mktemp("fuzz") / "data", "--max-running-requests", "2",
                        "--max-waiting-requests", "4", "--max-tokens-per-forward", "12000", "--max-upload-mb", "1")
    yield live
    print(f"fuzzing sent {COUNT['requests']} requests")
    live.stop()


def check(response: httpx.Response) -> None:
    COUNT["requests"] += 1
    assert response.status_code < 500, (response.request.method, response.request.url, response.text)
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        assert "error" in response.json() and "Traceback" not in response.text


@settings(max_examples=EXAMPLES["json"], deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_fuzz_json_create(fuzz_server, body):
    check(httpx.post(f"{fuzz_server.api}/videos", content=json.dumps(body, allow_nan=True),
                     headers={"content-type": "application/json"}, timeout=30))


@settings(max_examples=EXAMPLES["form"], deadline=None, suppress_health_check=list(HealthCheck))
@given(body=form_bodies, raw=st.binary(max_size=200), upload=st.sampled_from([None, "input_reference", "junk"]))
def test_fuzz_multipart_and_raw(fuzz_server, body, raw, upload):
    files = {name: (None, value) for name, value in body.items()}  # multipart even without a file
    if upload:
        files[upload] = ("f.bin", raw, "application/octet-stream")
    check(httpx.post(f"{fuzz_server.api}/videos", files=files, timeout=30))
    check(httpx.post(f"{fuzz_server.api}/videos", content=raw, headers={"content-type": "text/plain"}, timeout=30))


@settings(max_examples=EXAMPLES["paths"], deadline=None, suppress_health_check=list(HealthCheck))
@given(video_id=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40),
       query=st.dictionaries(st.sampled_from(["after", "limit", "order", "variant", "api_key"]), st.text(max_size=12)))
def test_fuzz_paths_and_queries(fuzz_server, video_id, query):
    quoted = f"{fuzz_server.api}/videos/{quote(video_id, safe='') or 'x'}"  # any text, percent-encoded
    for method, url in (("GET", quoted), ("DELETE", quoted), ("GET", f"{quoted}/content"),
                        ("GET", f"{quoted}/stream.m3u8"), ("GET", f"{fuzz_server.api}/videos")):
        check(httpx.request(method, url, params=query, timeout=30))
