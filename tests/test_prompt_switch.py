"""Changing the prompt of a video while it is generated (prompt schedules): the schedule
arithmetic, the scheduler, the engine's determinism, and the API (REST, SSE, the realtime
WebSocket, resume after a crash) on live helios-tiny servers."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.errors import InvalidRequestError
from helios_serve.model_executor.step_io import MAX_BLEND_PROMPTS, PromptSwitch, RequestSpec, prompt_mix

SMALL = dict(height=64, width=64)


# -- the schedule's arithmetic ---------------------------------------------------------------------
def approx(mix) -> dict:
    return {name: pytest.approx(weight) for name, weight in mix}


def test_a_transition_blends_linearly_into_the_new_prompt():
    switches = (PromptSwitch(2, "b", 3),)
    assert prompt_mix("a", switches, 0) == (("a", 1.0),)
    assert prompt_mix("a", switches, 1) == (("a", 1.0),)
    assert dict(prompt_mix("a", switches, 2)) == approx((("a", 3 / 4), ("b", 1 / 4)))
    assert dict(prompt_mix("a", switches, 3)) == approx((("a", 2 / 4), ("b", 2 / 4)))
    assert dict(prompt_mix("a", switches, 4)) == approx((("a", 1 / 4), ("b", 3 / 4)))
    assert prompt_mix("a", switches, 5) == (("b", 1.0),)
    assert prompt_mix("a", (PromptSwitch(2, "b", 0),), 2) == (("b", 1.0),)  # no transition: at once


def test_a_switch_during_a_transition_starts_from_the_blend_reached():
    switches = (PromptSwitch(2, "b", 3), PromptSwitch(3, "c", 1))
    assert dict(prompt_mix("a", switches, 2)) == approx((("a", 3 / 4), ("b", 1 / 4)))
    # chunk 3 blends what chunk 2 used with c, half and half
    assert dict(prompt_mix("a", switches, 3)) == approx((("a", 3 / 8), ("b", 1 / 8), ("c", 1 / 2)))
    assert prompt_mix("a", switches, 4) == (("c", 1.0),)
    for chunk in range(6):
        assert sum(weight for _, weight in prompt_mix("a", switches, chunk)) == pytest.approx(1.0)


def test_with_prompt_from_drops_the_switches_planned_from_then_on():
    spec = RequestSpec("a", "", 330, 64, 64, 0, 1.0, (1, 1, 1),
                       prompt_switches=(PromptSwitch(2, "b"), PromptSwitch(5, "c", 2)))
    changed = spec.with_prompt_from(4, "d", 1)
    assert changed.prompt_switches == (PromptSwitch(2, "b"), PromptSwitch(4, "d", 1))
    assert changed.prompts == ("a", "b", "d")


def test_a_prompt_changed_during_transitions_again_and_again_blends_a_bounded_set():
    switches = tuple(PromptSwitch(k, f"p{k}", 3) for k in range(1, 40))  # each during the last one's transition
    for chunk in (10, 39, 41):
        mix = prompt_mix("p0", switches, chunk)
        assert len(mix) <= MAX_BLEND_PROMPTS and abs(sum(w for _, w in mix) - 1) < 1e-12
    mix = dict(prompt_mix("p0", switches, 39))
    assert max(mix, key=mix.get) == "p39" and "p0" not in mix  # the newest weighs most, the oldest went
    assert prompt_mix("p0", switches, 42) == (("p39", 1.0),)


def test_the_prompts_still_needed_are_those_of_the_chunks_to_come():
    spec = RequestSpec("a", "", 330, 64, 64, 0, 1.0, (1, 1, 1),
                       prompt_switches=(PromptSwitch(2, "b"), PromptSwitch(5, "c", 2)))
    assert spec.prompts_from(0) == ("a", "b", "c")
    assert spec.prompts_from(5) == ("b", "c")  # chunks 5 and 6 blend b into c
    assert spec.prompts_from(7) == spec.prompts_from(9) == ("c",)


def test_the_schedule_is_checked_against_the_prompt_and_the_chunks():
    def params(*entries):
        schedule = [{"from_chunk": k, "prompt": p, "transition_chunks": t} for k, p, t in entries]
        return VideoSamplingParams.from_fields({"num_frames": 99, "prompt_schedule": schedule})

    assert params((0, "a", 0), (2, "b", 1)).prompt_switches("a", 99) == (PromptSwitch(2, "b", 1),)
    for entries in [((0, "other", 0),), ((1, "a", 0),), ((0, "a", 0), (2, "b", 0), (2, "c", 0)),
                    ((0, "a", 0), (3, "b", 0))]:  # 99 frames: chunks 0 to 2
        with pytest.raises(InvalidRequestError) as caught:
            params(*entries).prompt_switches("a", 99)
        assert caught.value.param == "prompt_schedule"


# -- the scheduler ------------------------------------------------------------------------------
def test_switch_prompt_applies_from_the_next_chunk_not_begun():
    from test_scheduler import add, make_scheduler, spec

    from helios_serve.model_executor.step_io import DecodedChunk, StepResult
    from helios_serve.request import RequestStatus

    scheduler = make_scheduler()
    request = add(scheduler, "a", spec=spec(num_frames=99, steps=(1, 1, 1)))
    assert scheduler.switch_prompt("a", "while waiting") == 0  # nothing begun while it waits
    begun, now = [], 0.0
    while request.status is not RequestStatus.FINISHED_COMPLETED and now < 500:
        now += 1.0
        plan = scheduler.schedule(now)
        if "a" in plan.begin_chunk:  # planned, not yet executed: that chunk has begun all the same
            begun.append(request.chunk_index)
            if request.chunk_index < 2:
                assert scheduler.switch_prompt("a", f"after {request.chunk_index}", 1) == request.chunk_index + 1
            else:  # the last chunk has begun: nothing left to switch
                with pytest.raises(ValueError):
                    scheduler.switch_prompt("a", "too late")
        elif begun and begun[-1] < 2:  # between begins, the next chunk not begun is the one after
            assert scheduler.switch_prompt("a", f"again after {begun[-1]}") == begun[-1] + 1
        result = StepResult(chunks=[DecodedChunk(rid, 0, None) for rid in plan.decode])
        scheduler.update_from_output(plan, result, now)
    assert begun == [0, 1, 2] and request.status is RequestStatus.FINISHED_COMPLETED
    assert [s.from_chunk for s in request.spec.prompt_switches] == [0, 1, 2]
    with pytest.raises(KeyError):  # finished
        scheduler.switch_prompt("a", "finished")
    with pytest.raises(KeyError):
        scheduler.switch_prompt("unknown", "x")


# -- the engine: a schedule is deterministic -------------------------------------------------------
def schedule(*entries) -> tuple[PromptSwitch, ...]:
    return tuple(PromptSwitch(*entry) for entry in entries)


def chunks_of(engine: HeliosEngine, requests: dict[str, tuple[str, VideoSamplingParams]], on_chunk=None):
    """Run requests together; request id -> [frames of each chunk]. ``on_chunk(core, chunk)`` after each."""
    core = engine.core
    for request_id, (prompt, params) in requests.items():
        core.add_request(request_id, engine.resolve(prompt, params))
    out = {request_id: {} for request_id in requests}
    while core.has_unfinished():
        for chunk in core.step().chunks:
            out[chunk.request_id][chunk.chunk_index] = chunk.frames
            if on_chunk is not None:
                on_chunk(core, chunk)
    return {request_id: [chunks[i] for i in sorted(chunks)] for request_id, chunks in out.items()}


def test_a_schedule_gives_the_same_frames_alone_and_batched():
    scheduled = VideoSamplingParams(num_frames=99, seed=5, prompt_schedule=schedule(
        (0, "a red fox", 0), (1, "a blue whale", 1), (2, "a green forest", 0)), **SMALL)
    plain = VideoSamplingParams(num_frames=99, seed=5, **SMALL)
    alone = chunks_of(HeliosEngine(), {"s": ("a red fox", scheduled)})["s"]
    engine = HeliosEngine(policy="round-robin")
    together = chunks_of(engine, {"s": ("a red fox", scheduled), "other": ("something else", plain)})
    assert max(engine.stats.batch_size_counts) > 1  # the two really shared forwards
    assert len(alone) == 3 and all(np.array_equal(a, b) for a, b in zip(alone, together["s"]))
    unscheduled = chunks_of(HeliosEngine(), {"p": ("a red fox", plain)})["p"]
    assert np.array_equal(alone[0], unscheduled[0])  # the same until the first switch
    assert not np.array_equal(alone[1], unscheduled[1]) and not np.array_equal(alone[2], unscheduled[2])


def test_a_transition_changes_the_video_only_from_its_chunk_on():
    plain = VideoSamplingParams(num_frames=132, seed=9, **SMALL)
    blended = plain.with_updates(prompt_schedule=schedule((0, "a lake", 0), (2, "a volcano", 2)))
    before = chunks_of(HeliosEngine(), {"p": ("a lake", plain)})["p"]
    after = chunks_of(HeliosEngine(), {"b": ("a lake", blended)})["b"]
    assert [np.array_equal(x, y) for x, y in zip(before, after)] == [True, True, False, False]


def test_a_request_whose_prompt_keeps_changing_holds_only_the_embeddings_it_still_needs():
    """Memory stays bounded however often a live stream's prompt changes: the runner lets go
    of prompts no chunk to come uses."""
    engine, held = HeliosEngine(), []

    def switch_every_chunk(core, chunk):
        if chunk.chunk_index + 2 < 12:
            engine.core.executor.prepare_prompt(f"scene {chunk.chunk_index}")
            core.switch_prompt("changing", f"scene {chunk.chunk_index}", 1)
        if chunk.chunk_index + 1 < 12:  # the runner lets the request go after its last chunk
            held.append(len(engine.core.executor.runner.requests["changing"].prompt_embeddings))

    params = VideoSamplingParams(num_frames=12 * 33, seed=5, **SMALL)
    chunks_of(engine, {"changing": ("scene start", params)}, switch_every_chunk)
    # Each switch comes during the last one's transition: the blend of the most recent prompts
    # (at most MAX_BLEND_PROMPTS), plus the one just queued.
    assert len(held) == 11 and max(held) <= MAX_BLEND_PROMPTS + 1 < 11, held  # not one per switch


def test_a_switch_while_running_equals_the_schedule_from_the_start():
    """Switching a running request gives exactly the video of a request created with the
    resulting schedule: the switch takes effect from a chunk not begun, so nothing already made
    depends on when it came."""
    params = VideoSamplingParams(num_frames=132, seed=3, **SMALL)
    engine, switched = HeliosEngine(), []

    def switch_after_first(core, chunk):
        if chunk.chunk_index == 0:
            engine.core.executor.prepare_prompt("a desert at dusk")
            switched.append(core.switch_prompt("live", "a desert at dusk", 1))

    live = chunks_of(engine, {"live": ("a city at dawn", params)}, switch_after_first)["live"]
    (from_chunk,) = switched
    assert 1 <= from_chunk < 4
    replay = params.with_updates(prompt_schedule=schedule((0, "a city at dawn", 0), (from_chunk, "a desert at dusk", 1)))
    replayed = chunks_of(HeliosEngine(), {"r": ("a city at dawn", replay)})["r"]
    assert len(live) == len(replayed) == 4
    assert all(np.array_equal(a, b) for a, b in zip(live, replayed))


# -- the API on live servers -----------------------------------------------------------------------
def sse_events(server, video_id: str, events: list):
    """Read the job's SSE stream into ``events`` as (kind, data) until it ends."""

    async def read() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            async with client.stream("GET", f"{server.api}/videos/{video_id}/events") as response:
                kind = None
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        events.append((kind, json.loads(line[6:])))
                        if kind in ("completed", "failed"):
                            return

    return read()


def test_change_the_prompt_of_a_running_video_over_rest(server):
    from test_server_restart import decode, wait

    settings = {"prompt": "a quiet harbor", "size": "128x64", "num_frames": 264, "seed": 21, "fps": 16}
    job = httpx.post(f"{server.api}/videos", json=settings).json()
    url = f"{server.api}/videos/{job['id']}/prompt"
    events: list = []

    async def scenario():
        reader = asyncio.create_task(sse_events(server, job["id"], events))
        async with httpx.AsyncClient(timeout=60) as client:
            while (before := (await client.get(f"{server.api}/videos/{job['id']}")).json())["chunks_completed"] < 1:
                await asyncio.sleep(0.02)
            answer = await client.post(url, json={"prompt": "a storm over the harbor", "transition_chunks": 2})
        await asyncio.wait_for(reader, 120)
        return before, answer

    before, answer = asyncio.run(scenario())
    assert answer.status_code == 200, answer.text
    changed = answer.json()
    assert changed["object"] == "video.prompt" and changed["id"] == job["id"]
    from_chunk = changed["from_chunk"]
    assert before["chunks_completed"] <= from_chunk < 8 and from_chunk >= 1
    expected = [{"from_chunk": 0, "prompt": "a quiet harbor", "transition_chunks": 0},
                {"from_chunk": from_chunk, "prompt": "a storm over the harbor", "transition_chunks": 2}]
    assert changed["prompt_schedule"] == expected and changed["transition_chunks"] == 2
    # listeners heard it, before the chunks that follow it
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "completed"
    (prompt_event,) = [data for kind, data in events if kind == "prompt"]
    assert prompt_event == {"from_chunk": from_chunk, "prompt": "a storm over the harbor", "transition_chunks": 2}
    chunks_after = [data["chunk_index"] for kind, data in events[kinds.index("prompt"):] if kind == "chunk"]
    assert from_chunk in chunks_after
    finished = wait(server, job["id"], lambda j: j["status"] == "completed")
    assert finished["prompt_schedule"] == expected and finished["prompt"] == "a quiet harbor"
    # replaying the recorded schedule with the same seed and settings gives the very same video
    made = decode(httpx.get(f"{server.api}/videos/{job['id']}/content").content)
    replay = httpx.post(f"{server.api}/videos/sync", json={**settings, "prompt_schedule": expected}, timeout=180)
    assert replay.status_code == 200, replay.text
    assert np.array_equal(decode(replay.content), made)
    plain = decode(httpx.post(f"{server.api}/videos/sync", json=settings, timeout=180).content)
    assert not np.array_equal(plain, made)

    # refusals: a finished video, an unknown one, bad fields (named)
    late = httpx.post(url, json={"prompt": "too late"})
    assert late.status_code == 409 and late.json()["error"]["code"] == "video_not_running"
    assert httpx.post(f"{server.api}/videos/video_unknown/prompt", json={"prompt": "x"}).status_code == 404
    for body, field in [({"prompt": ""}, "prompt"), ({"prompt": "x", "transition_chunks": -1}, "transition_chunks"),
                        ({"prompt": "x", "transition_chunks": 1001}, "transition_chunks"), ({}, "prompt"),
                        ({"prompt": "x", "camera": 1}, "camera")]:
        refused = httpx.post(url, json=body)
        assert refused.status_code == 422 and refused.json()["error"]["param"] == field, (body, refused.text)


def test_a_switch_when_every_chunk_has_begun_is_a_conflict(server):
    from test_server_restart import wait

    job = httpx.post(f"{server.api}/videos", json={"prompt": "one chunk", "size": "128x64", "num_frames": 33}).json()
    answers = []
    while (status := httpx.get(f"{server.api}/videos/{job['id']}").json()["status"]) != "completed":
        answers.append(httpx.post(f"{server.api}/videos/{job['id']}/prompt", json={"prompt": "x"}))
    wait(server, job["id"], lambda j: j["status"] == "completed")
    assert status == "completed"
    # queued: the whole video follows the new prompt (200); once its only chunk began: 409
    for answer in answers:
        assert answer.status_code in (200, 409), answer.text
        if answer.status_code == 200:
            assert answer.json()["from_chunk"] == 0
        else:
            assert answer.json()["error"]["code"] in ("no_chunk_left", "video_not_running")


def test_a_video_records_a_bounded_number_of_prompts(server):
    """The 256th recorded prompt is the last: the job's row stays bounded however long it runs."""
    import sqlite3

    from helios_serve.sampling_params import MAX_SCHEDULE_ENTRIES

    job = httpx.post(f"{server.api}/videos", json={"prompt": "a long road", "size": "128x64",
                                                    "num_frames": 33 * 400}).json()
    full = [{"from_chunk": k, "prompt": f"mile {k}", "transition_chunks": 0} for k in range(MAX_SCHEDULE_ENTRIES)]
    with sqlite3.connect(server.data_dir / "jobs.sqlite3") as store:  # as if it had changed 255 times already
        (settings,) = store.execute("SELECT request_json FROM videos WHERE id = ?", (job["id"],)).fetchone()
        store.execute("UPDATE videos SET request_json = ? WHERE id = ?",
                      (json.dumps({**json.loads(settings), "prompt_schedule": full}), job["id"]))
    refused = httpx.post(f"{server.api}/videos/{job['id']}/prompt", json={"prompt": "one more"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "too_many_prompt_changes", refused.text
    assert httpx.delete(f"{server.api}/videos/{job['id']}").status_code == 200


def test_realtime_session_interaction_changes_the_prompt(server):
    import websockets

    from test_server_restart import decode

    start = {"type": "session.start", "prompt": "a paper boat", "format": "m4s", "width": 128, "height": 64,
             "fps": 16, "num_frames": 264, "seed": 4}

    async def session():
        messages, binary = [], []
        async with websockets.connect(server.url.replace("http", "ws") + "/v1/realtime/video", max_size=None) as ws:
            await ws.send(json.dumps(start))
            async for message in ws:
                if isinstance(message, bytes):
                    binary.append(message)
                    if len(binary) == 1:
                        await ws.send(json.dumps({"type": "session.interaction", "event_id": "camera-1",
                                                  "event": {"camera": {"yaw": 0.2}}}))
                        await ws.send(json.dumps({"type": "session.interaction", "event_id": "e1",
                                                  "event": {"prompt": "a paper boat in the rain"},
                                                  "transition_chunks": 1}))
                    continue
                messages.append(json.loads(message))
        return messages, binary

    messages, binary = asyncio.run(session())
    by_type = {m["type"]: m for m in messages}
    assert messages[-1]["type"] == "session.done" and messages[-1]["status"] == "completed", messages
    refused = next(m for m in messages if m.get("event_id") == "camera-1")
    assert refused["type"] == "error" and refused["code"] == "interaction_failed" and "camera" in refused["message"]
    queued = by_type["session.interaction.queued"]
    assert queued["event_id"] == "e1" and queued["prompt"] == "a paper boat in the rain"
    from_chunk = queued["applies_from_chunk"]
    assert 1 <= from_chunk < 8 and len(binary) == 8
    job = httpx.get(f"{server.api}/videos/{messages[0]['request_id']}").json()
    recorded = [{"from_chunk": 0, "prompt": "a paper boat", "transition_chunks": 0},
                {"from_chunk": from_chunk, "prompt": "a paper boat in the rain", "transition_chunks": 1}]
    assert job["prompt_schedule"] == recorded
    streamed = decode(b"".join(binary))
    settings = {"prompt": "a paper boat", "size": "128x64", "fps": 16, "num_frames": 264, "seed": 4,
                "prompt_schedule": recorded}
    replay = httpx.post(f"{server.api}/videos/sync", json=settings, timeout=180)
    assert replay.status_code == 200, replay.text
    assert np.array_equal(decode(replay.content), streamed)


def test_a_scheduled_video_killed_between_switches_resumes_exactly(tmp_path):
    from live_server import start_server
    from test_server_restart import decode, wait

    job_settings = {"prompt": "a snowy village", "size": "128x64", "num_frames": 264, "seed": 8, "prompt_schedule": [
        {"from_chunk": 0, "prompt": "a snowy village", "transition_chunks": 0},
        {"from_chunk": 2, "prompt": "a village in spring", "transition_chunks": 2},
        {"from_chunk": 5, "prompt": "a village at night", "transition_chunks": 0}]}
    data_dir = tmp_path / "data"
    first = start_server(data_dir)
    try:
        job = httpx.post(f"{first.api}/videos", json=job_settings).json()
        killed_at = wait(first, job["id"], lambda j: j["chunks_completed"] >= 3)
    finally:
        first.stop(crash=True)
    assert killed_at["chunks_completed"] < 8 and killed_at["status"] == "in_progress"

    second = start_server(data_dir)
    try:
        assert httpx.get(f"{second.api}/videos/{job['id']}").json()["chunks_completed"] >= 3
        finished = wait(second, job["id"], lambda j: j["status"] in ("completed", "failed"))
        assert finished["status"] == "completed", finished
        assert finished["prompt_schedule"] == job_settings["prompt_schedule"]
        resumed = decode(httpx.get(f"{second.api}/videos/{job['id']}/content").content)
        reference = decode(httpx.post(f"{second.api}/videos/sync", json=job_settings, timeout=180).content)
        assert resumed.shape == reference.shape and np.array_equal(resumed, reference)
    finally:
        second.stop()


def test_the_new_prompt_is_encoded_off_the_engine_thread():
    """AsyncHeliosEngine.switch_prompt encodes on a worker thread; the engine step that applies
    the switch finds the embeddings in the text encoder's cache and encodes nothing itself."""
    import threading

    from helios_serve.engine.async_engine import AsyncHeliosEngine

    engine = AsyncHeliosEngine()
    encoder = engine.core.executor.runner.text_encoder
    encodes: list[tuple[str, str]] = []
    uncached = encoder._encode_uncached

    def recording(prompt):  # observes, changes nothing
        encodes.append((threading.current_thread().name, prompt))
        return uncached(prompt)

    encoder._encode_uncached = recording
    params = VideoSamplingParams(num_frames=132, seed=4, **SMALL)

    async def run() -> int:
        handle = engine.add_request(engine.resolve("a quiet pond", params), "pond")
        async for chunk in engine.chunks(handle):
            if chunk.chunk_index == 0:
                from_chunk = await engine.switch_prompt("pond", "a frog jumps in", 1)
        return from_chunk

    try:
        from_chunk = asyncio.run(run())
    finally:
        engine.shutdown()
    assert from_chunk >= 1
    on_engine_thread = [prompt for thread, prompt in encodes if thread == "helios-engine"]
    assert "a frog jumps in" not in on_engine_thread, encodes
    assert "a frog jumps in" in [prompt for _, prompt in encodes]
